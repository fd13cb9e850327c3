"""bganhash: unsupervised binary hashing for image retrieval (BGAN), Hamming indexes and retrieval metrics."""

from bganhash._validation import InputError, NotFittedError

__version__ = "0.1.0"

__all__ = ["InputError", "NotFittedError", "__version__"]
