"""Images small on disk but huge decoded: 16-bit and float pictures of 50 megapixels, a few
hundred kB each, sent to a real app server process (the tiny checkpoint). The one over the
decoded-bytes limit is refused, the others are decoded within the shared decoding budget and
ranked, and the server's peak resident memory stays near that budget. Icons whose frame is far
larger than their directory says and palette images that become RGBA are counted at what they
decode to."""

from __future__ import annotations

import base64
import io
import struct
import time

import numpy as np
import pytest
from PIL import Image

from benchmarks.load_test import serve_app

from .served import peak_rss_mb, rerank_urls, reset_peak, rss_mb

QUERY = "a grey ramp"
pytestmark = pytest.mark.timeout(300)

WIDTH, HEIGHT = 10_000, 5_000  # 50 MP: 100 MB decoded at 16 bits, 200 MB as float
LIMIT = 150_000_000            # the server's LYCHEE_MAX_DECODED_BYTES and LYCHEE_MAX_DECODING_BYTES
SIXTEEN_BIT = 6
MEMORY_BOUND_MB = 400          # one 16-bit image decoded (100 MB), its 8-bit copy and slack; without a budget ~2 GB


def encoded(mode: str) -> str:
    buffer = io.BytesIO()
    if mode == "F":  # refused before decoding, so a flat one will do
        Image.new("F", (WIDTH, HEIGHT), 1234.5).save(buffer, "TIFF", compression="tiff_deflate")
    else:
        ramp = np.linspace(0, 50_000, WIDTH, dtype=np.float32).astype(np.uint16)
        Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp, (HEIGHT, WIDTH))), "I;16").save(
            buffer, "PNG", compress_level=9)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    env = {"LYCHEE_MAX_DECODED_BYTES": str(LIMIT), "LYCHEE_MAX_DECODING_BYTES": str(LIMIT), "MALLOC_ARENA_MAX": "2"}
    with serve_app(tiny_checkpoint, queue_size=4, environ=env) as running:
        yield running


def test_huge_decoded_images_are_bounded_per_image_and_per_request(server):
    sixteen_bit, floats = encoded("I;16"), encoded("F")
    assert len(sixteen_bit) < 1_000_000 and len(floats) < 2_000_000
    rerank_urls(server.url, QUERY, [sixteen_bit])  # warm: the model loaded, one such image decoded once
    before = rss_mb(server.pid)
    reset_peak(server.pid)
    result = rerank_urls(server.url, QUERY, [floats] + [sixteen_bit] * SIXTEEN_BIT)
    growth = peak_rss_mb(server.pid) - before
    print(f"{SIXTEEN_BIT} 16-bit + 1 float 50 MP image: peak resident memory +{growth:.0f} MB")
    (refused,) = result["errors"]
    assert refused["index"] == 0 and "LYCHEE_MAX_DECODED_BYTES" in refused["error"]
    assert "200.0 MB in memory decoded (10000x5000 F)" in refused["error"]
    assert result["counts"]["results"] == SIXTEEN_BIT
    assert growth < MEMORY_BOUND_MB, f"peak resident memory grew by {growth:.0f} MB"


SIDE = 6000  # 36 MP: as an ICO's PNG frame 144 MB decoded, 288 MB resized; as a transparent palette 324 MB
CONTAINER_BOUND_MB = 420  # the largest decode (324 MB) and slack; counted by the header, two at once: ~650


def icon_around_png(side: int) -> bytes:
    """An ICO whose directory says 256x256 and whose one frame is a ``side`` x ``side`` PNG."""
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (10, 200, 30, 255)).save(buffer, "PNG")
    png = buffer.getvalue()
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


def transparent_palette_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (side, side), 3).save(buffer, "PNG", transparency=0)
    return buffer.getvalue()


def test_icons_and_transparent_palettes_are_counted_at_the_size_and_mode_they_decode_to(server):
    icon, palette = (("data:image/png;base64," + base64.b64encode(data).decode())
                     for data in (icon_around_png(SIDE), transparent_palette_png(SIDE)))
    rerank_urls(server.url, QUERY, [icon, palette])  # warm: both decoded once
    before = rss_mb(server.pid)
    reset_peak(server.pid)
    started = time.monotonic()
    result = rerank_urls(server.url, QUERY, [icon, palette] * 3)
    growth = peak_rss_mb(server.pid) - before
    print(f"3 ICO ({SIDE}x{SIDE} PNG inside) + 3 transparent palette PNG: peak resident memory +{growth:.0f} MB "
          f"in {time.monotonic() - started:.1f} s")
    assert result["counts"]["results"] == 6, result["errors"]
    assert growth < CONTAINER_BOUND_MB, f"peak resident memory grew by {growth:.0f} MB"
