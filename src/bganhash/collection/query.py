"""Query images: untrusted bytes (an upload, a file) decoded into an RGB array, or a QueryImageError saying why.

The limits (bytes, pixels, formats, modes) are checked from the header, before the image is decoded. Given the
backbone's input size, a large image is shrunk as it is decoded, as indexing does (so that an indexed image
uploaded finds itself): JPEGs are decoded at a reduced scale, other formats are decoded, then reduced by a whole
factor and converted to 8-bit RGB strip by strip before the full-size image is freed, so that what a query keeps
for the backbone is a few megabytes whatever its size.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import io
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from bganhash._validation import InputError
from bganhash.datasets.images import convert_to_rgb

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "MAX_PIXELS_CEILING", "QUERY_FORMATS", "QUERY_MODES",
           "DecodeBudget", "QueryImageError", "check_max_pixels", "decode_query", "decoded_bytes", "read_query_file",
           "shrink_to_rgb"]

QUERY_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
QUERY_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
               "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
# A query needs 224 x 224 pixels, yet a PNG is decoded whole before it can be shrunk: at 4 bytes a pixel (RGBA,
# CMYK, 32-bit) an image at the limit holds 200 MB while it is decoded. 50 MP takes every common camera's output
# (48-50 MP phone sensors at full resolution, 8160 x 6120 = 49.9 MP); larger pictures can be scaled down first.
DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_CEILING = 89_478_485  # Pillow's decompression-bomb threshold, which bganhash never raises
DEFAULT_MAX_BYTES = 20_000_000
MAX_ASPECT = 8  # a side longer than 8 x the input size is reduced further, so a thin 50 MP strip stays small
_STRIP_PIXELS = 1 << 19  # pixels converted to RGB at a time while a large image is shrunk
_TRIM_AFTER_BYTES = 64 << 20  # after decoding an image this large, freed heap memory goes back to the system
_REDUCED_AS_IS = frozenset({"L", "RGB", "RGBX", "CMYK", "YCbCr", "I", "F"})  # Image.reduce needs no copy of these
_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def check_max_pixels(max_pixels: int) -> int:
    """Return `max_pixels`, or raise InputError when it is not a whole number from 1 to MAX_PIXELS_CEILING."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise InputError(f"max_pixels={max_pixels!r} must be a whole number of pixels, at least 1")
    if max_pixels > MAX_PIXELS_CEILING:
        raise InputError(f"max_pixels={max_pixels:,} is above {MAX_PIXELS_CEILING:,}, Pillow's decompression-bomb "
                         f"limit, which bganhash keeps; use at most {MAX_PIXELS_CEILING:,}")
    return int(max_pixels)


class QueryImageError(InputError):
    """A query image that cannot be used; `status` is the HTTP status the service answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class DecodeBudget:
    """Bytes of full-size decoded images that threads may hold at once: a decode waits until its image fits
    (one larger than the whole budget waits to be alone), so that concurrent decodes of large images take turns."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold `size` bytes of the budget for the duration of the block."""
        size = min(size, self.capacity)
        with self._changed:
            self._changed.wait_for(lambda: self.used + size <= self.capacity)
            self.used += size
        try:
            yield
        finally:
            with self._changed:
                self.used -= size
                self._changed.notify_all()


@contextlib.contextmanager
def _trimmed(size: int) -> Iterator[None]:
    """After a decode of `size` bytes or more, give the heap's free pages back to the system (glibc's malloc_trim;
    elsewhere nothing): the strips' temporaries otherwise stay in each decoding thread's heap."""
    try:
        yield
    finally:
        if size >= _TRIM_AFTER_BYTES and _malloc_trim() is not None:
            _malloc_trim()(0)


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def decoded_bytes(image: Image.Image) -> int:
    """Bytes Pillow holds for `image` decoded: 4 a pixel for multi-band and 32-bit modes (RGB is stored as RGBX),
    2 for 16-bit, 1 for the rest."""
    width, height = image.size
    if len(image.getbands()) > 1 or image.mode in ("I", "F"):
        return 4 * width * height
    return (2 if image.mode.startswith("I;16") else 1) * width * height


def decode_query(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
                 min_side: int | None = None, budget: DecodeBudget | None = None) -> np.ndarray:
    """Decode untrusted image bytes into an (H, W, 3) uint8 array, or raise QueryImageError saying why.

    Only common raster formats are opened; the pixel count is checked from the header before decoding.
    With `min_side` (the backbone's input size) a large image is reduced as it is decoded, its shorter side to
    no less than `min_side` (see `shrink_to_rgb`). With `budget`, the decode waits for its full-size image's
    bytes to fit in it.
    """
    check_max_pixels(max_pixels)
    if not data:
        raise QueryImageError("the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise QueryImageError(f"the image is {len(data):,} bytes; the limit is {max_bytes:,}", status=413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=QUERY_FORMATS) as image:
                _check_header(image, max_pixels)
                if min_side and image.format == "JPEG":
                    image.draft("RGB", (min_side, min_side))
                size = decoded_bytes(image)
                with budget.reserve(size) if budget else contextlib.nullcontext(), _trimmed(size):
                    image.load()
                    orientation = image.getexif().get(_ORIENTATION, 1)
                    rgb = shrink_to_rgb(image, min_side)
                    transpose = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
                    pixels = np.array(rgb.transpose(transpose) if transpose is not None else rgb, dtype=np.uint8)
                    image.close()  # frees the full-size image before its bytes go back to the budget
                    return pixels
    except QueryImageError:
        raise
    except UnidentifiedImageError:
        raise QueryImageError(f"not an image in a supported format ({', '.join(QUERY_FORMATS)})",
                              status=415) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise QueryImageError(f"the image has too many pixels (a decompression bomb): {exc}", status=413) from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error ... on broken files
        raise QueryImageError(f"the image is truncated or corrupted ({type(exc).__name__}: {exc})") from None


def _check_header(image: Image.Image, max_pixels: int) -> None:
    """Refuse an image by what its header says: too many pixels (413) or an unsupported mode (415)."""
    width, height = image.size
    if width * height > max_pixels:
        raise QueryImageError(f"the image is {width}x{height} = {width * height:,} pixels; the limit "
                              f"is {max_pixels:,} (a decompression bomb?)", status=413)
    if image.mode not in QUERY_MODES:
        raise QueryImageError(f"image mode {image.mode!r} is not supported; use one of "
                              f"{', '.join(QUERY_MODES)}", status=415)


def shrink_to_rgb(image: Image.Image, min_side: int | None) -> Image.Image:
    """A loaded image as 8-bit RGB, reduced by the largest whole factor that keeps its shorter side at least
    `min_side` (indexing's rule), and a side over MAX_ASPECT x `min_side` further; modes whose conversion or
    reduction would copy the whole image are converted strip by strip."""
    width, height = image.size
    factors = (1, 1)
    if min_side:
        uniform = max(1, min(width, height) // min_side)
        factors = (max(uniform, width // (MAX_ASPECT * min_side)), max(uniform, height // (MAX_ASPECT * min_side)))
    if factors == (1, 1):
        return convert_to_rgb(image)
    if image.mode in _REDUCED_AS_IS:  # I and F are reduced whole: their scaling depends on the whole range
        return convert_to_rgb(image.reduce(factors))
    step = max(1, _STRIP_PIXELS // (width * factors[1])) * factors[1]
    reduced = Image.new("RGB", (-(-width // factors[0]), -(-height // factors[1])))
    for top in range(0, height, step):
        strip = convert_to_rgb(image.crop((0, top, width, min(height, top + step))))
        reduced.paste(strip.reduce(factors), (0, top // factors[1]))
    return reduced


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
