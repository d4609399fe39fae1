"""Load candidate images safely: paths, bytes or PIL images in; small RGB images out.

Every failure is an :class:`ImageLoadError` whose message names the cause, so the
caller can record it against that one image and go on with the rest.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .limits import Limits

ImageSource = str | os.PathLike | bytes | bytearray | Image.Image

DEFAULT_MAX_SIDE = 1920


class ImageLoadError(ValueError):
    """An image could not be used; the message says why."""


def source_label(source: ImageSource, index: int) -> str:
    """A human name for an input: its file name when known, else ``image N`` (1-based)."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    filename = getattr(source, "filename", "")
    return Path(filename).name if filename else f"image {index + 1}"


def _open(source: ImageSource, limits: Limits) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageLoadError("file not found" if not path.exists() else "not a file")
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise ImageLoadError(f"file is {size / 1e6:.1f} MB, above the limit of "
                                 f"{limits.max_file_bytes / 1e6:.1f} MB (LYCHEE_MAX_FILE_BYTES)")
        data = path.read_bytes()
    if not data:
        raise ImageLoadError("empty file (0 bytes)")
    if len(data) > limits.max_file_bytes:
        raise ImageLoadError(f"data is {len(data) / 1e6:.1f} MB, above the limit of "
                             f"{limits.max_file_bytes / 1e6:.1f} MB (LYCHEE_MAX_FILE_BYTES)")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageLoadError("not a readable image (unknown or corrupt format)") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale into 8 bits instead of clipping at 255.
        high = max(image.getextrema()[1], 1)
        image = image.point(lambda v: v * 255.0 / high, "L") if image.mode == "I" \
            else image.convert("I").point(lambda v: v * 255.0 / high, "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageSource, *, max_side: int = DEFAULT_MAX_SIDE,
               limits: Limits | None = None) -> Image.Image:
    """Decode ``source`` into an RGB image, EXIF-rotated, longest side <= ``max_side``.

    Animated images give their first frame. Raises :class:`ImageLoadError`.
    """
    limits = limits or Limits()
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, Image.Image)):
        raise ImageLoadError(f"unsupported input type {type(source).__name__}; "
                             "give a file path, bytes or a PIL image")
    image = _open(source, limits)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageLoadError(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_image_pixels:
        raise ImageLoadError(f"image is {width}x{height} = {width * height / 1e6:.0f} MP, above the limit of "
                             f"{limits.max_image_pixels / 1e6:.0f} MP (LYCHEE_MAX_IMAGE_PIXELS)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.seek(0)
            image.draft("RGB", (max_side, max_side))  # JPEG: decode at reduced size, much faster
            image = ImageOps.exif_transpose(image)
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"not a readable image ({_describe(exc)})") from None


def _describe(exc: Exception) -> str:
    text = str(exc).strip().rstrip(".")
    if "truncated" in text.lower():
        return "truncated file"
    return text or type(exc).__name__
