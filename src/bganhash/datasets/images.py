"""Decoding, validating, converting and resizing single images, with errors that name the file."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from bganhash._validation import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_VALIDATION_DRAFT_SIZE = (64, 64)


def is_image_name(name: str) -> bool:
    """True for a non-hidden file name with one of the image extensions (any case)."""
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def convert_to_rgb(image: Image.Image) -> Image.Image:
    """Return `image` as 8-bit RGB: alpha is composited on white, palettes expanded, CMYK and 16-bit scaled."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette is not None and image.palette.mode == "RGBA"
        return _composite_on_white(image.convert("RGBA")) if has_alpha else image.convert("RGB")
    if mode in _ALPHA_MODES:
        return _composite_on_white(image.convert("RGBA"))
    if mode in _SIXTEEN_BIT_MODES or mode in {"I", "F"}:
        return Image.fromarray(_high_depth_to_uint8(image), mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot convert an image of mode {mode!r} to RGB: {exc}") from exc


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Flatten an RGBA image onto an opaque white background."""
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float grayscale image to 0..255."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        values = np.nan_to_num(values) * scale
    elif image.mode in _SIXTEEN_BIT_MODES or (values.size and values.max() > 255):
        values = np.clip(values, 0, 65535) / 257.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


@contextlib.contextmanager
def _bombs_are_errors() -> Iterator[None]:
    """Make Pillow's decompression-bomb warning an exception, so oversized images count as bad files."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _open(source: str | os.PathLike | bytes | IO[bytes]) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    return Image.open(source)


def decode_image(source: str | os.PathLike | bytes | IO[bytes], location: str,
                 min_side: int | None = None) -> np.ndarray:
    """Decode one image file (path, bytes or file object) to an (H, W, 3) uint8 RGB array, EXIF-rotated.

    With `min_side`, a large image is decoded at reduced size, no side below `min_side`: JPEGs by DCT
    scaling (`draft`), others by box reduction before conversion, so a 12-megapixel photo bound for a
    224 px backbone costs milliseconds and a few megabytes, not a full-size decode."""
    try:
        with _bombs_are_errors(), _open(source) as image:
            if min_side is not None and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            image = ImageOps.exif_transpose(image)
            if min_side is not None:
                image = reduce_to(image, min_side)
            return np.asarray(convert_to_rgb(image), dtype=np.uint8)
    except InputError as exc:
        raise InputError(f"{location}: {exc}") from exc
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, struct.error, bomb errors)
        raise InputError(f"cannot read image {location}: {_describe(exc)}") from exc


def reduce_to(image: Image.Image, min_side: int) -> Image.Image:
    """`image` shrunk by the largest whole factor that keeps both sides at least `min_side` (box filter)."""
    factor = min(image.size) // max(1, min_side)
    if factor < 2:
        return image
    try:
        return image.reduce(factor)
    except ValueError:  # modes Image.reduce does not take (palette, 1-bit): convert first
        return convert_to_rgb(image).reduce(factor)


def image_problem(source: str | os.PathLike | bytes | IO[bytes]) -> str | None:
    """Decode `source` cheaply but fully (JPEGs at reduced scale); return why it is unusable, or None."""
    try:
        with _bombs_are_errors(), _open(source) as image:
            if image.format == "JPEG":
                image.draft("RGB", _VALIDATION_DRAFT_SIZE)
            image.load()
    except Exception as exc:  # see decode_image
        return _describe(exc)
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop an (H, W, 3) image to a square and resize it to (size, size, 3).

    Pillow's bilinear filter widens its support when shrinking, so reductions average like an area filter.
    """
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    resized = Image.fromarray(np.ascontiguousarray(square)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)
