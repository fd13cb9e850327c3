"""Query images: untrusted bytes (an upload, a file) decoded into an RGB array, or a QueryImageError saying why.

The limits (bytes, pixels, formats, modes) are checked before the image is decoded.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bganhash._validation import InputError
from bganhash.datasets.images import convert_to_rgb

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "QUERY_FORMATS", "QUERY_MODES", "QueryImageError",
           "decode_query", "read_query_file"]

QUERY_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
QUERY_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
               "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
DEFAULT_MAX_BYTES = 20_000_000


class QueryImageError(InputError):
    """A query image that cannot be used; `status` is the HTTP status the service answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_query(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
                 min_side: int | None = None) -> np.ndarray:
    """Decode untrusted image bytes into an (H, W, 3) uint8 array, or raise QueryImageError saying why.

    Only common raster formats are opened; the pixel count is checked from the header before decoding;
    JPEGs are decoded at a reduced scale no smaller than 4 x `min_side` (the backbone's input size) when given,
    which keeps a large photo's decoding cheap next to the backbone.
    """
    if not data:
        raise QueryImageError("the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise QueryImageError(f"the image is {len(data):,} bytes; the limit is {max_bytes:,}", status=413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=QUERY_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise QueryImageError(f"the image is {width}x{height} = {width * height:,} pixels; the limit "
                                          f"is {max_pixels:,} (a decompression bomb?)", status=413)
                if image.mode not in QUERY_MODES:
                    raise QueryImageError(f"image mode {image.mode!r} is not supported; use one of "
                                          f"{', '.join(QUERY_MODES)}", status=415)
                if min_side and image.format == "JPEG":
                    image.draft("RGB", (4 * min_side, 4 * min_side))
                image.load()
                return np.array(convert_to_rgb(ImageOps.exif_transpose(image)), dtype=np.uint8)
    except QueryImageError:
        raise
    except UnidentifiedImageError:
        raise QueryImageError(f"not an image in a supported format ({', '.join(QUERY_FORMATS)})",
                              status=415) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise QueryImageError(f"the image has too many pixels (a decompression bomb): {exc}", status=413) from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error ... on broken files
        raise QueryImageError(f"the image is truncated or corrupted ({type(exc).__name__}: {exc})") from None


def read_query_file(path: str | os.PathLike, **limits: Any) -> np.ndarray:
    """Decode the query image file `path` with the same checks as an upload."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return decode_query(data, **limits)
    except QueryImageError as exc:
        raise QueryImageError(f"{path}: {exc}", exc.status) from None
