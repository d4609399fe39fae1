"""Request bodies are capped before they are read: a real app server process (the tiny
checkpoint) gets bodies far over ``LYCHEE_MAX_REQUEST_BYTES``, declared and streamed, and
answers 413 while its resident memory stays flat; a body under the cap still works."""

from __future__ import annotations

import base64
import json

import pytest

from benchmarks.load_test import serve_app
from lychee.limits import Limits, base64_size

from .conftest import make_image
from .served import peak_rss_mb, post, reset_peak, rss_mb

pytestmark = pytest.mark.timeout(240)

CAP = 8_000_000            # the server's LYCHEE_MAX_REQUEST_BYTES
MAX_FILE_BYTES = 1_000_000  # and LYCHEE_MAX_FILE_BYTES; with 2 images per request, uploads stop at ~2.1 MB
SENT_MB = 256              # what the streamed bodies try to send
MEMORY_BOUND_MB = 80       # peak growth allowed while refusing them (the body without a cap: ~3x SENT_MB)
PNG = make_image(32, 24, (200, 30, 30))


def data_uri_body(size: int) -> list[bytes]:
    """A rerank_urls call whose one data: URI makes the body ``size`` bytes, in 1 MiB chunks."""
    head = b'{"data": ["a cat", ["data:image/png;base64,'
    tail = b'"]]}'
    filler = size - len(head) - len(tail)
    chunk = b"A" * 2 ** 20
    return [head, *(chunk for _ in range(filler // len(chunk))), b"A" * (filler % len(chunk)), tail]


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    env = {"LYCHEE_MAX_REQUEST_BYTES": str(CAP), "LYCHEE_MAX_FILE_BYTES": str(MAX_FILE_BYTES),
           "LYCHEE_MAX_IMAGES": "2", "MALLOC_ARENA_MAX": "2"}
    with serve_app(tiny_checkpoint, queue_size=4, environ=env) as running:
        warm_up(running.url)
        yield running


def warm_up(url: str) -> None:
    """One real request under the cap: the model is loaded and the allocator warm before measuring."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    result = client.predict("a red square", [uri, uri], api_name="/rerank_urls")
    assert result["counts"]["results"] == 2
    client.close()


def test_the_request_limit_defaults_to_the_image_limits():
    limits = Limits()
    assert limits.max_request_image_bytes == 4 * limits.max_file_bytes
    assert limits.max_request_bytes == base64_size(limits.max_request_image_bytes) + 2 ** 20
    assert Limits.from_env({"LYCHEE_MAX_FILE_BYTES": "1000"}).max_request_bytes == base64_size(4000) + 2 ** 20
    assert Limits.from_env({"LYCHEE_MAX_REQUEST_BYTES": "5000"}).max_request_bytes == 5000


def test_a_declared_body_over_the_cap_is_refused_before_it_is_read(server):
    status, body, _ = post(f"{server.url}/gradio_api/call/rerank_urls", [b'{"data": '],
                           content_length=1_000_000_000, timeout_s=10)
    assert status == 413
    error = json.loads(body)["error"]["message"]
    assert "LYCHEE_MAX_REQUEST_BYTES" in error and "8,000,000" in error and "请求体" in error


@pytest.mark.parametrize("route", ["/gradio_api/call/rerank_urls", "/gradio_api/queue/join"])
def test_a_streamed_body_over_the_cap_is_cut_off_with_memory_flat(server, route):
    before = rss_mb(server.pid)
    reset_peak(server.pid)
    status, body, sent = post(f"{server.url}{route}", data_uri_body(SENT_MB * 2 ** 20), timeout_s=60)
    growth = peak_rss_mb(server.pid) - before
    print(f"{route}: status {status}, sent {sent / 2 ** 20:.0f} MiB, peak resident memory +{growth:.0f} MB")
    assert status == 413 and b"LYCHEE_MAX_REQUEST_BYTES" in body
    assert sent < SENT_MB * 2 ** 20 / 2, "the server read on far past its cap"
    assert growth < MEMORY_BOUND_MB, f"peak resident memory grew by {growth:.0f} MB"


def multipart(files: int, size: int) -> tuple[str, list[bytes]]:
    boundary = "lycheeboundary"
    parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="f{i}.png"\r\n'
              f"Content-Type: image/png\r\n\r\n").encode() + b"\0" * size + b"\r\n" for i in range(files)]
    return f"multipart/form-data; boundary={boundary}", [*parts, f"--{boundary}--\r\n".encode()]


def test_uploads_are_capped_at_the_images_a_request_may_hold(server):
    content_type, chunks = multipart(2, 900_000)
    status, _, _ = post(f"{server.url}/gradio_api/upload", chunks, content_type=content_type)
    assert status == 200  # two files under the file limit: a request's worth
    content_type, chunks = multipart(4, 900_000)  # each file is fine, together they are more than 2 images
    status, body, _ = post(f"{server.url}/gradio_api/upload", chunks, content_type=content_type)
    assert status == 413 and "LYCHEE_MAX_IMAGES x LYCHEE_MAX_FILE_BYTES" in json.loads(body)["error"]["message"]


def test_the_server_still_ranks_after_the_refusals(server):
    warm_up(server.url)


def test_a_form_field_in_an_upload_is_cut_off_at_its_own_small_limit(server):
    from lychee.body_limit import MAX_FORM_FIELD_BYTES

    boundary = "lycheeboundary"
    field = (f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\n').encode()
    chunks = [field, *(b"x" * 2 ** 16 for _ in range(24)), f"\r\n--{boundary}--\r\n".encode()]  # 1.5 MB, in no file
    status, body, _ = post(f"{server.url}/gradio_api/upload", chunks,
                           content_type=f"multipart/form-data; boundary={boundary}")
    error = json.loads(body)["error"]["message"]
    assert status == 413 and f"a form field of the upload is larger than {MAX_FORM_FIELD_BYTES:,} bytes" in error
