"""Slowloris against a real app server process: a bounded number of connections that open and send
part of their headers, far more than the server's connection cap. The server's open files stay
near the cap, the slow connections are closed at the header deadline, a bystander is answered
within a second meanwhile, and the log stays small."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.load_test import serve_app
from lychee.web.serving import RepeatFilter

pytestmark = pytest.mark.timeout(240)

MAX_CONNECTIONS = 100
HEADER_TIMEOUT_S = 3
HALF_OPEN = 400


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("slowloris") / "server.log"
    env = {"LYCHEE_MAX_CONNECTIONS": str(MAX_CONNECTIONS), "LYCHEE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)}
    with serve_app(tiny_checkpoint, queue_size=4, environ=env, log_path=log) as running:
        yield running, log


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def half_open(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_half_open_connections_are_capped_and_closed_while_a_bystander_is_answered(server):
    running, log = server
    port = int(running.url.rsplit(":", 1)[1])
    files_before, log_before = open_files(running.pid), log.stat().st_size
    slowest = 0.0
    socks = []
    started = time.monotonic()
    for i in range(HALF_OPEN):
        socks.append(half_open(port))
        if i % 100 == 99:
            asked = time.monotonic()
            assert httpx.get(f"{running.url}/gradio_api/info", timeout=10).status_code == 200
            slowest = max(slowest, time.monotonic() - asked)
    time.sleep(0.5)
    files_during = open_files(running.pid)
    time.sleep(HEADER_TIMEOUT_S + 1)
    closed = sum(closed_by_server(s) for s in socks)
    for s in socks:
        s.close()
    grown = log.stat().st_size - log_before
    print(f"{HALF_OPEN} half-open connections: server files {files_before} -> {files_during}, "
          f"{closed} closed by the server within {time.monotonic() - started:.1f} s, "
          f"slowest bystander {slowest:.2f} s, log +{grown} bytes")
    assert files_during < files_before + MAX_CONNECTIONS + 10
    assert closed == HALF_OPEN
    assert slowest < 1.0
    assert grown < 20_000


def test_a_log_line_repeated_past_its_share_is_dropped_then_counted():
    passed = []
    handler = logging.Handler()
    handler.emit = passed.append
    handler.addFilter(RepeatFilter(repeats=3, window_s=0.2))
    logger = logging.getLogger("tests.repeats")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(1000):
            logger.error("socket.accept() out of system resource: %s", "Too many open files")
        logger.error("another line")
        time.sleep(0.25)
        logger.error("socket.accept() out of system resource: %s", "Too many open files")
    finally:
        logger.removeHandler(handler)
    assert len(passed) == 5
    assert "997 more like this" in passed[-1].getMessage() and passed[3].getMessage() == "another line"


def test_the_server_limits_reach_uvicorn_through_gradio_launch():
    from gradio import http_server

    from lychee.web import serving

    serving.apply()
    config = http_server.uvicorn.Config(app=None, port=1)
    assert config.http is serving.GuardedProtocol and config.timeout_keep_alive == serving.KEEP_ALIVE_S
    assert config.limit_concurrency == serving.max_connections() + 1
    assert Path(http_server.__file__).exists()
