"""bganhash: unsupervised binary hashing for image retrieval (BGAN), Hamming indexes and retrieval metrics."""

from bganhash._validation import InputError, NotFittedError
from bganhash.index import Index

__version__ = "0.1.0"

__all__ = ["Index", "InputError", "NotFittedError", "__version__"]
