"""bganhash: unsupervised binary hashing for image retrieval (BGAN), Hamming indexes and retrieval metrics."""

__version__ = "0.1.0"  # first: modules imported below record it in the files they write

from bganhash._validation import InputError, NotFittedError  # noqa: E402
from bganhash.bgan import BGANHasher  # noqa: E402
from bganhash.index import Index  # noqa: E402

__all__ = ["BGANHasher", "Index", "InputError", "NotFittedError", "__version__"]
