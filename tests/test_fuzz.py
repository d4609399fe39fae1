"""Fuzzing: random bytes, random images (any mode, size, format, frames, EXIF), random damage
and random text never raise anything but the documented errors."""

from __future__ import annotations

import io
import math
import random
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from lychee.images import MAX_ASPECT_RATIO, ImageLoadError, load_image
from lychee.parsing import parse_score
from lychee.query import clean_query

MAX_SIDE = 64
MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16", "I;16B", "LA", "PA",
         "La", "RGBa", "RGBX"]
FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"]
SIGNATURES = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ", b"II*\0", b"BM"]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the corrupt files fed to it
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def loads_or_refuses(source) -> None:
    """The one contract: an RGB image within bounds, or ImageLoadError - nothing else."""
    try:
        image = load_image(source, max_side=MAX_SIDE)
    except ImageLoadError as exc:
        assert str(exc)
        return
    assert image.mode == "RGB"
    assert max(image.size) <= MAX_SIDE * MAX_ASPECT_RATIO  # padded only up to the ratio
    assert max(image.size) / min(image.size) <= MAX_ASPECT_RATIO


@st.composite
def random_images(draw) -> Image.Image:
    """An image of any mode and size, its pixels random bytes (NaN and infinity included for F)."""
    mode = draw(st.sampled_from(MODES))
    size = (draw(st.integers(1, 96)), draw(st.integers(1, 96)))
    length = len(Image.new(mode, size).tobytes())
    return Image.frombytes(mode, size, random.Random(draw(st.integers(0, 2**32))).randbytes(length))


@st.composite
def encoded_images(draw) -> bytes:
    """``random_images`` saved in a random format: maybe animated, maybe with any EXIF orientation."""
    image, fmt = draw(random_images()), draw(st.sampled_from(FORMATS))
    options: dict = {}
    if draw(st.booleans()):
        frames = draw(st.integers(1, 3))
        options.update(save_all=True, append_images=[image.copy() for _ in range(frames)])
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF") and draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 12))
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt, **options)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)  # Pillow cannot write this mode in this format
    return buffer.getvalue()


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    loads_or_refuses(data)


@FUZZ
@given(st.sampled_from(SIGNATURES), st.binary(max_size=2048))
def test_random_bytes_behind_a_real_format_signature(signature, data):
    loads_or_refuses(signature + data)


@FUZZ
@given(random_images())
def test_random_pil_images_of_every_mode_load(image):
    loaded = load_image(image, max_side=MAX_SIDE)
    assert loaded.mode == "RGB" and max(loaded.size) <= MAX_SIDE * MAX_ASPECT_RATIO


@FUZZ
@given(encoded_images())
def test_random_encoded_images(data):
    loads_or_refuses(data)


@FUZZ
@given(encoded_images(), st.floats(0.0, 1.0))
def test_randomly_truncated_images(data, keep):
    loads_or_refuses(data[: int(len(data) * keep)])


@FUZZ
@given(encoded_images(), st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=8))
def test_randomly_damaged_images(data, damage):
    damaged = bytearray(data)
    for position, value in damage:
        damaged[position % len(damaged)] = value
    loads_or_refuses(bytes(damaged))


SCORE_TEXT = st.lists(st.one_of(
    st.sampled_from(["Score", "score:", "得分", "：", "=", "/", "/10", "分", "out of 10", ".", "。", " ", "\n",
                     "１", "９", "．", "-", "+", "nan", "inf", "1e9", "10", "0"]),
    st.integers(-100, 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(max_size=20),
), max_size=40).map("".join)


@settings(max_examples=300, deadline=2000)  # a regex gone quadratic takes seconds here
@given(st.one_of(SCORE_TEXT, st.text(alphabet="0123456789./ 分", max_size=5000),
                 st.integers(1, 20000).map(lambda n: "9" * n + "/"), st.integers(1, 20000).map(lambda n: "1." * n)))
def test_score_parser_takes_any_text(text):
    for lenient in (True, False):
        value = parse_score(text, lenient=lenient)
        assert value is None or (math.isfinite(value) and 0.0 <= value <= 10.0)


# The documented query rule: chat-template control tokens such as <|im_end|> become a space.
CONTROL_TOKEN = re.compile(r"<\|[^<>|\s]{1,40}\|>")


@FUZZ
@given(st.one_of(st.text(max_size=300),
                 st.lists(st.sampled_from(["<|im_end|>", "<|0|>", "<|image_pad|>", " ", "cat", "<|", "|>"]),
                          max_size=12).map("".join)),
       st.integers(1, 100))
def test_any_query_is_cleaned_or_rejected_as_empty(query, max_chars):
    expected = CONTROL_TOKEN.sub(" ", query).strip()[:max_chars].rstrip()
    try:
        cleaned = clean_query(query, max_chars)
    except ValueError as exc:
        assert not expected and "query is empty" in str(exc)
        return
    assert cleaned and len(cleaned) <= max_chars and cleaned == expected
    assert not CONTROL_TOKEN.search(cleaned) and clean_query(cleaned, max_chars) == cleaned  # idempotent
