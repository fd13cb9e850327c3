"""A searchable image collection on disk: build an index directory from a folder of images, load it, search it.

Modules: `store` (the directory's format: manifest, generations, checksums, lock, cleanup), `generation`
(writing the next generation), `build` (building and updating from a folder), `reader` (`Collection`, the
loaded index) and `query` (decoding untrusted query images).
"""

from bganhash.collection.build import BuildConfig, build_collection, collection_bgan_settings, training_rows
from bganhash.collection.generation import PAUSE_AFTER_ENV, BuildSummary, make_thumbnail
from bganhash.collection.query import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    QUERY_FORMATS,
    QUERY_MODES,
    QueryImageError,
    decode_query,
    read_query_file,
)
from bganhash.collection.reader import Collection, Match
from bganhash.collection.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    file_sha256,
    read_manifest,
    verify_files,
)

__all__ = [
    "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_FILE", "PAUSE_AFTER_ENV",
    "QUERY_FORMATS", "QUERY_MODES", "BuildConfig", "BuildSummary", "Collection", "Match", "QueryImageError",
    "build_collection", "decode_query", "file_sha256", "make_thumbnail", "read_manifest", "read_query_file",
    "collection_bgan_settings", "training_rows", "verify_files",
]
