"""bganhash: unsupervised binary hashing for image retrieval (BGAN), Hamming indexes and retrieval metrics."""

from bganhash._validation import InputError, NotFittedError
from bganhash.bgan import BGANHasher
from bganhash.index import Index

__version__ = "0.1.0"

__all__ = ["BGANHasher", "Index", "InputError", "NotFittedError", "__version__"]
