"""A Hamming-distance index over packed binary codes (faiss-shaped: add, search, save, load)."""

from bganhash.index.index import BACKENDS, MISSING_DISTANCE, Backend, Index, parse_backend

__all__ = ["BACKENDS", "Backend", "Index", "MISSING_DISTANCE", "parse_backend"]
