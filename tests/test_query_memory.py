"""Image queries against a real app server process (the mid random checkpoint): a series of
distinct 1080p reference images leaves resident memory flat. A query image's vision-tower pass
that kept its autograd graph held ~640 MB per query with this checkpoint, never freed."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from benchmarks.load_test import serve_app
from lychee.random_checkpoint import build_random_checkpoint

from .served import rss_mb

pytestmark = pytest.mark.timeout(600)

QUERIES = 6
FLAT_MB = 100


def photo_uri(seed: int, size: tuple[int, int] = (1920, 1080)) -> str:
    """A distinct noisy 1080p JPEG, as a data: URI."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = build_random_checkpoint(tmp_path_factory.mktemp("mid"), "mid")
    with serve_app(checkpoint, queue_size=4, environ={"MALLOC_ARENA_MAX": "2"}) as running:
        yield running


def test_resident_memory_stays_flat_over_distinct_1080p_image_queries(server):
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    candidate = photo_uri(10_000, (320, 240))

    def ask(seed: int) -> dict:
        return client.predict("", [candidate], query_image_url=photo_uri(seed), api_name="/rerank_urls")

    try:
        ask(0)
        ask(1)  # warm: model, allocator pools and the first cache entries in place
        before = rss_mb(server.pid)
        for seed in range(2, 2 + QUERIES):
            assert ask(seed)["counts"]["results"] == 1
        growth = rss_mb(server.pid) - before
    finally:
        client.close()
    print(f"{QUERIES} distinct 1080p image queries: resident memory {growth:+.0f} MB")
    assert growth < FLAT_MB, f"resident memory grew by {growth:.0f} MB over {QUERIES} image queries"
