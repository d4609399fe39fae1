"""Load candidate images safely: paths, bytes or PIL images in; small RGB images out.

Every failure is an :class:`ImageLoadError` whose message names the cause, so the
caller can record it against that one image and go on with the rest. What is handled:

- size limits checked before decoding: file bytes, width x height read from the header
  (decompression bombs never get decoded), and the bytes the decoded pixels will take
  (pixels x bytes per pixel of the mode: a small 16-bit or float file can need gigabytes);
- decoding shares one budget in the process (``LYCHEE_MAX_DECODING_BYTES``): an image waits
  until the images being decoded leave room for it, so parallel decoding stays bounded;
  16/32-bit and float images are brought to 8 bits a block of rows at a time, never
  through a full-size float copy;
- empty, truncated, corrupt and non-image files, whatever Pillow raises for them;
- animated GIF/WebP/PNG (the first frame), EXIF orientation (a broken EXIF block is
  ignored, not fatal), every Pillow mode: palette, alpha (composited on white), CMYK,
  16/32-bit and float greyscale (scaled into 8 bits);
- shapes the model cannot take: an aspect ratio beyond 200:1 is padded with white;
- the pixel budget: given one, the image is resampled once, straight to the size the model's
  processor would resize it to (:func:`budget_size`), so no backend resizes it again and every
  backend - in this process, in vLLM, behind a vLLM server - sees the same pixels.
"""

from __future__ import annotations

import io
import logging
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from . import protocol
from .limits import Limits, env_name
from .messages import Message, UserError, printable
from .settings import DEFAULT_MAX_SIDE

log = logging.getLogger(__name__)

ImageSource = str | os.PathLike | bytes | bytearray | Image.Image
PixelBudget = tuple[int, int]  # (min_pixels, max_pixels) of an image after resizing

MAX_ASPECT_RATIO = 200  # Qwen2-VL's image processor refuses anything more elongated
MAX_RESIZE_STEPS = 16   # budget_size stands still within 6 steps where max_pixels >= 2 x min_pixels
RESAMPLE = Image.Resampling.BICUBIC  # the Qwen2-VL image processor's own filter

# File name extensions worth decoding when a folder is walked (anything else is skipped).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".gif",
                              ".bmp", ".dib", ".tif", ".tiff"})

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_RESIZED_AS_THEY_ARE = frozenset({"L", "RGB", "RGBA"})  # scaling them before conversion changes no pixel
# Bytes per pixel as Pillow holds each mode in memory (RGB takes 4, like RGBA); others take 4.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_BLOCK_PIXELS = 2 ** 20  # rows converted to 8 bits at a time: about 4 MB of float32

# Leading bytes of the common formats, to tell a damaged image from a file that is no image.
_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP",
               b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


class ImageLoadError(ValueError):
    """An image could not be used: :attr:`message` says why, in either language (``str()``: English)."""

    def __init__(self, key: str, **params: Any) -> None:
        self.message = Message(key, params)
        super().__init__(str(self.message))

    def __reduce__(self) -> tuple[Any, ...]:  # pickled by key (a ZeroGPU worker gets refused downloads)
        return _load_error, (self.message.key, dict(self.message.params))


def _load_error(key: str, params: dict[str, Any]) -> ImageLoadError:
    return ImageLoadError(key, **params)


def source_label(source: ImageSource, index: int) -> str:
    """A human name for an input: its file name when known, else ``image N`` (1-based)."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    filename = getattr(source, "filename", "")
    return Path(filename).name if filename else f"image {index + 1}"


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _amount(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size:,} bytes"


def _too_large(size: int, limits: Limits) -> ImageLoadError:
    return ImageLoadError("image_file_too_large", size=_amount(size), limit=_amount(limits.max_file_bytes),
                          variable=env_name("max_file_bytes"))


def _read_bytes(path: Path, limits: Limits) -> bytes:
    try:
        if not path.is_file():
            raise ImageLoadError("image_file_missing" if not path.exists() else "image_not_a_file")
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise _too_large(size, limits)  # refused without reading it
        return path.read_bytes()
    except OSError as exc:
        raise ImageLoadError("image_file_unreadable", reason=exc.strerror or str(exc)) from None


def _open(source: ImageSource, limits: Limits) -> Image.Image:
    """A lazily decoded image: only the header has been read."""
    if isinstance(source, Image.Image):
        return source
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else _read_bytes(Path(source), limits)
    if not data:
        raise ImageLoadError("image_empty_file")
    if len(data) > limits.max_file_bytes:
        raise _too_large(len(data), limits)
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise
    except Exception:  # noqa: BLE001 - each format plugin fails its own way on a damaged header
        raise ImageLoadError("image_not_readable", detail=_unidentified(data)) from None


def _unidentified(data: bytes) -> Message:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return Message("image_damaged_header", {"format": "WEBP"})
    kind = next((name for magic, name in _SIGNATURES.items() if data.startswith(magic)), None)
    return Message("image_damaged_header", {"format": kind}) if kind else Message("image_unknown_format")


def _check_pixels(image: Image.Image, limits: Limits) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageLoadError("image_no_pixels", width=width, height=height)
    if width * height > limits.max_image_pixels:
        raise ImageLoadError("image_too_many_pixels", width=width, height=height, mp=f"{width * height / 1e6:.0f}",
                             limit=f"{limits.max_image_pixels / 1e6:.0f}", variable=env_name("max_image_pixels"))


def decoded_bytes(image: Image.Image) -> int:
    """The memory ``image``'s pixels take once decoded: width x height x bytes per pixel of its mode."""
    return image.width * image.height * _PIXEL_BYTES.get(image.mode, 4)


def _check_decoded_bytes(image: Image.Image, limits: Limits) -> int:
    size = decoded_bytes(image)
    if size > limits.max_decoded_bytes:
        raise ImageLoadError("image_too_much_memory", size=_amount(size), width=image.width, height=image.height,
                             mode=image.mode, limit=_amount(limits.max_decoded_bytes),
                             variable=env_name("max_decoded_bytes"))
    return size


class DecodingBudget:
    """Bytes of images being decoded at once in this process; each decode waits for room.

    A fork (ZeroGPU's worker) copies the process as it is: a lock held by a thread that does not exist
    in the child, bytes reserved by decodes that never finish there. The child starts afresh."""

    def __init__(self) -> None:
        self._start()
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        self._room = threading.Condition()
        self._in_use = 0

    @contextmanager
    def reserve(self, size: int, capacity: int) -> Iterator[None]:
        """Hold ``size`` bytes of ``capacity`` while decoding (alone when ``size`` is more than it)."""
        with self._room:
            self._room.wait_for(lambda: self._in_use == 0 or self._in_use + size <= capacity)
            self._in_use += size
        try:
            yield
        finally:
            with self._room:
                self._in_use -= size
                self._room.notify_all()


DECODING = DecodingBudget()


def _exif_transposed(image: Image.Image) -> Image.Image:
    try:
        if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
            return image  # upright already: exif_transpose would only copy every pixel
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - a malformed EXIF block must not cost the pixels
        log.info("ignoring unreadable EXIF orientation: %s", printable(exc))
        return image


def _finite_rows(image: Image.Image, top: int, rows: int) -> np.ndarray:
    block = np.array(image.crop((0, top, image.width, min(image.height, top + rows))), dtype=np.float32)
    return np.nan_to_num(block, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def _scaled_to_8_bit(image: Image.Image) -> Image.Image:
    """16/32-bit and float greyscale: scale by the brightest value instead of clipping at 255,
    a block of rows at a time (a full-size float copy would take 4 bytes a pixel, several times)."""
    rows = max(1, _BLOCK_PIXELS // image.width)
    tops = range(0, image.height, rows)
    high = max(max(float(_finite_rows(image, top, rows).max(initial=0.0)) for top in tops), 1e-12)
    scaled = np.empty((image.height, image.width), dtype=np.uint8)
    for top in tops:
        block = _finite_rows(image, top, rows)
        scaled[top:top + rows] = np.clip(block, 0.0, high, out=block) * (255.0 / high)
    return Image.fromarray(scaled, "L")


def _to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    if image.mode in ("RGB", "RGBA"):
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _scaled_to_8_bit(image).convert("RGB")
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        if image.mode == "La":  # premultiplied alpha converts to RGBA only by way of LA
            image = image.convert("LA")
        return image.convert("RGBA")
    return image.convert("RGB")


def _flatten(image: Image.Image) -> Image.Image:
    """Composite an RGBA image on white; RGB passes through."""
    if image.mode != "RGBA":
        return image
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image).convert("RGB")


def _padded_to_model_shape(image: Image.Image) -> Image.Image:
    """Pad the short side with white until the aspect ratio is <= MAX_ASPECT_RATIO."""
    width, height = image.size
    floor = math.ceil(max(width, height) / MAX_ASPECT_RATIO)
    if width >= floor and height >= floor:
        return image
    canvas = Image.new("RGB", (max(width, floor), max(height, floor)), (255, 255, 255))
    canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
    return canvas


def _smart_resize(width: int, height: int, budget: PixelBudget) -> tuple[int, int]:
    """The Qwen2-VL image processor's ``smart_resize``, step for step, in (width, height) order."""
    factor, (min_pixels, max_pixels) = protocol.PATCH_PIXELS, budget
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar


def budget_size(width: int, height: int, budget: PixelBudget) -> tuple[int, int]:
    """(width, height) that the Qwen2-VL image processor takes a ``width`` x ``height`` image at and
    leaves alone: multiples of 28 (one visual token per 28 x 28 pixels), the area within ``budget``,
    the aspect ratio kept as closely as possible.

    That is its ``smart_resize`` - for photos one step. A very elongated image whose short side
    is held at 28 px can land above ``max_pixels`` after one step, and the processor would shrink
    it again: the step is repeated until the size stands still (a few steps when ``max_pixels >=
    2 x min_pixels``; a narrower budget may have no such size, and the last step's is used).
    Rounding can also push an aspect ratio just under 200:1 over it, which the processor refuses;
    the long side is then cut back to 200:1.
    """
    size = (width, height)
    for _ in range(MAX_RESIZE_STEPS):
        fitted = _smart_resize(*size, budget)
        if fitted == size:
            break
        size = fitted
    short = min(size)
    return min(size[0], MAX_ASPECT_RATIO * short), min(size[1], MAX_ASPECT_RATIO * short)


def visual_tokens(image: Image.Image, budget: PixelBudget) -> int:
    """How many visual tokens ``image`` becomes under ``budget``."""
    width, height = budget_size(image.width, image.height, budget)
    return width * height // protocol.PATCH_PIXELS ** 2


def fit_to_budget(image: Image.Image, budget: PixelBudget) -> Image.Image:
    """``image`` resampled to :func:`budget_size`; the image itself when it already has that size."""
    size = budget_size(image.width, image.height, budget)
    return image if image.size == size else image.resize(size, RESAMPLE)


def _capped(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled so that its longer side is at most ``max_side``."""
    scale = min(1.0, max_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _decode(image: Image.Image, max_side: int, budget: PixelBudget | None) -> Image.Image:
    """The decoded, upright, scaled RGB image (``image`` has had its first frame and draft chosen);
    with ``budget``, resampled once, straight to the size the model takes it at."""
    image.load()  # decode now: damaged data fails here, not later in the model's processor
    if image.mode.startswith("I") or image.mode == "F":
        image = _scaled_to_8_bit(image)  # 1 byte a pixel from here on
    image = _exif_transposed(image)
    if image.mode not in _RESIZED_AS_THEY_ARE:
        image = _to_rgb_or_rgba(image)
    # Scaled before any full-size copy of L, RGB, RGBA.
    if budget is None:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    elif (size := budget_size(*_capped(image.size, max_side), budget)) != image.size:
        image = image.resize(size, RESAMPLE)
    return _padded_to_model_shape(_flatten(_to_rgb_or_rgba(image)))


def _describe(exc: Exception, image_format: str | None) -> Message | str:
    text = str(exc).strip().rstrip(".")
    if "truncated" in text.lower():
        return Message("image_truncated", {"format": image_format}) if image_format else Message("image_truncated_file")
    return f"{image_format + ': ' if image_format else ''}{text or type(exc).__name__}"  # Pillow's own words


def load_image(source: ImageSource, *, max_side: int = DEFAULT_MAX_SIDE, limits: Limits | None = None,
               budget: PixelBudget | None = None) -> Image.Image:
    """Decode ``source`` into an RGB image, EXIF-rotated, longest side <= ``max_side``, and with
    ``budget`` at the size the model takes it (:func:`budget_size` of the capped size).

    Animated images give their first frame. Raises :class:`ImageLoadError`, and nothing else;
    an :class:`ImageLoadError` given as ``source`` (an image that already failed upstream,
    such as a refused download) is raised as it is, so it becomes that image's error record.
    """
    if isinstance(source, ImageLoadError):
        raise source
    limits = limits or Limits()
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, Image.Image)):
        raise ImageLoadError("image_bad_type", type=type(source).__name__)
    image_format = None
    try:
        image = _open(source, limits)
        image_format = image.format
        _check_pixels(image, limits)
        image.seek(0)  # animated images: the first frame
        image.draft("RGB", (max_side, max_side))  # JPEG: decode at reduced size, much faster
        with DECODING.reserve(_check_decoded_bytes(image, limits), limits.max_decoding_bytes):
            # thumbnail() scales in place: the caller's image stays as it is (a resize makes a new one)
            return _decode(image.copy() if image is source and budget is None else image, max_side, budget)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError:
        raise ImageLoadError("image_bomb", limit=f"{limits.max_image_pixels / 1e6:.0f}",
                             variable=env_name("max_image_pixels")) from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on malformed input
        raise ImageLoadError("image_not_readable", detail=_describe(exc, image_format)) from None


def load_query_image(source: ImageSource, *, max_side: int = DEFAULT_MAX_SIDE,
                     limits: Limits | None = None, budget: PixelBudget | None = None) -> Image.Image:
    """A query (reference) image, decoded like a candidate. It is part of the request, so one
    that cannot be used refuses the request: ``UserError`` ``bad_query_image`` with the cause."""
    try:
        return load_image(source, max_side=max_side, limits=limits, budget=budget)
    except ImageLoadError as exc:
        raise UserError("bad_query_image", reason=exc.message) from None
