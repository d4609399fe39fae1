"""Compression bombs behind image URLs: a test server on 127.0.0.1 sends tiny brotli, gzip
and deflate bodies that unpack to 256 MiB, whatever the request asked for. A real app
server process fetches them through ``/rerank_urls``: brotli is refused, gzip and deflate
are cut off at the file limit while they are unpacked, the good image is still ranked, and
the server's peak resident memory barely moves."""

from __future__ import annotations

import base64
import http.server
import threading
import zlib
from collections.abc import Iterator

import brotli
import pytest

from benchmarks.load_test import serve_app

from .conftest import make_image
from .served import peak_rss_mb, rerank_urls, reset_peak, rss_mb

QUERY = "a green square"
pytestmark = pytest.mark.timeout(300)

UNPACKED = 256 * 2 ** 20
MAX_FILE_BYTES = 5_000_000
MEMORY_BOUND_MB = 60  # peak growth allowed; unpacking any one bomb whole would add 256 MB or more
PNG = make_image(40, 30, (30, 200, 30))


def compressed(encoding: str) -> bytes:
    chunk, count = b"\0" * 2 ** 24, UNPACKED // 2 ** 24
    if encoding == "br":
        packer = brotli.Compressor(quality=1)
        return b"".join(packer.process(chunk) for _ in range(count)) + packer.finish()
    packer = zlib.compressobj(1, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    return b"".join(packer.compress(chunk) for _ in range(count)) + packer.flush()


class BombHandler(http.server.BaseHTTPRequestHandler):
    bombs: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        encoding = self.path.strip("/").removesuffix(".png")
        body = self.bombs.get(encoding)
        if body is None:
            self.send_error(404)
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading, as it should

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def bomb_port() -> Iterator[int]:
    BombHandler.bombs = {encoding: compressed(encoding) for encoding in ("br", "gzip", "deflate")}
    assert all(len(body) < 2_000_000 for body in BombHandler.bombs.values())
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BombHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    env = {"LYCHEE_MAX_FILE_BYTES": str(MAX_FILE_BYTES), "MALLOC_ARENA_MAX": "2"}
    with serve_app(tiny_checkpoint, queue_size=4, environ=env, module="tests.served") as running:
        yield running


def test_compression_bombs_are_per_image_errors_with_memory_flat(server, bomb_port):
    good = "data:image/png;base64," + base64.b64encode(PNG).decode()
    rerank_urls(server.url, QUERY, [good])  # warm: the model is loaded before measuring
    before = rss_mb(server.pid)
    reset_peak(server.pid)
    bombs = [f"http://bombs.example:{bomb_port}/{encoding}.png" for encoding in ("br", "gzip", "deflate")]
    result = rerank_urls(server.url, QUERY, [*bombs, good])
    growth = peak_rss_mb(server.pid) - before
    print(f"compression bombs: peak resident memory +{growth:.0f} MB")
    errors = {e["source"]: e["error"] for e in result["errors"]}
    assert "br-compressed body" in errors["br.png"] and "only uncompressed, gzip or deflate" in errors["br.png"]
    assert f"larger than {MAX_FILE_BYTES:,} bytes" in errors["gzip.png"]
    assert f"larger than {MAX_FILE_BYTES:,} bytes" in errors["deflate.png"]
    assert [r["source"] for r in result["results"]] == ["image 4"]
    assert growth < MEMORY_BOUND_MB, f"peak resident memory grew by {growth:.0f} MB"
