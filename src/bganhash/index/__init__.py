"""A Hamming-distance index over packed binary codes (faiss-shaped: add, search, save, load).

Modules: `backend` (the backend string), `engines` (the searchers behind each backend), `fileformat` (the
saved file), `index` (the `Index` facade over them).
"""

from bganhash.index.backend import BACKENDS, Backend, parse_backend
from bganhash.index.engines import MISSING_DISTANCE
from bganhash.index.index import Index

__all__ = ["BACKENDS", "Backend", "Index", "MISSING_DISTANCE", "parse_backend"]
