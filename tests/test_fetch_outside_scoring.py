"""Slow image URLs hold neither the scoring slot nor time without end: the launched demo
(one scoring slot) fetches a request's URLs concurrently, under one deadline, and scores a
tiny request sent meanwhile at once."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import make_image

pytestmark = pytest.mark.timeout(180)

PAUSE_S = 5.0
SLOW_URLS = 8
PNG = make_image(24, 24, (200, 200, 30))


class SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        time.sleep(PAUSE_S)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def slow_port() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture
def slow_host_is_public(monkeypatch):
    """``slow.example`` counts as a public host at 127.0.0.1 (the app runs in this process)."""
    from lychee import url_images

    judge = url_images._public_address

    async def public_address(host: str) -> str:
        return "127.0.0.1" if host == "slow.example" else await judge(host)

    monkeypatch.setattr(url_images, "_public_address", public_address)


def timed(work) -> tuple[float, object]:
    started = time.monotonic()
    result = work()
    return time.monotonic() - started, result


def test_a_tiny_request_is_scored_while_another_waits_for_slow_urls(demo_url, slow_port, slow_host_is_public,
                                                                   image_dir):
    from gradio_client import Client, handle_file

    slow = [f"http://slow.example:{slow_port}/{i}.png" for i in range(SLOW_URLS)]
    tiny = [handle_file(str(image_dir / "good0.png"))]
    with ThreadPoolExecutor(2) as pool:
        slow_call = pool.submit(timed, lambda: Client(demo_url, verbose=False).predict(
            "a yellow square", slow, api_name="/rerank_urls"))
        time.sleep(1.0)
        tiny_wait, tiny_result = timed(lambda: Client(demo_url, verbose=False).predict(
            "a red square", tiny, "", None, None, "", False, 0.05, 1920, None, api_name="/rerank"))
        slow_time, slow_result = slow_call.result()
    print(f"tiny request waited {tiny_wait:.1f} s; the slow one took {slow_time:.1f} s")
    assert tiny_result["counts"]["results"] == 1
    assert tiny_wait < PAUSE_S - 1.5, f"the tiny request waited {tiny_wait:.1f} s"
    assert slow_result["counts"]["results"] == SLOW_URLS  # all eight fetched at once, well within the deadline
    assert slow_time < 2 * PAUSE_S, f"eight {PAUSE_S:.0f} s URLs took {slow_time:.1f} s"
