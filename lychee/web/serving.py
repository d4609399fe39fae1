"""The HTTP server's own limits, and a log that repeated errors cannot flood.

A public deployment belongs behind a reverse proxy (a Hugging Face Space has one), which holds
slow clients itself. The server bounds what reaches it anyway: 20,000 half-open connections
once used up every file descriptor and wrote 333 MB of "Too many open files" in 40 s. So:

- a connection must finish a request's headers within ``LYCHEE_HEADER_TIMEOUT_S`` of opening
  (or of its previous answer), else it is closed;
- at most ``LYCHEE_MAX_CONNECTIONS`` connections are open; a new one beyond that closes the
  oldest one still sending its headers (a slow client loses its place, a prompt one gets in),
  and uvicorn answers 503 when every connection is busy with a request;
- an idle keep-alive connection closes after :data:`KEEP_ALIVE_S`;
- a log line repeated more than :data:`REPEATS` times a minute is dropped until the minute ends,
  then counted in the next one that passes (:class:`RepeatFilter`).

Gradio's ``launch()`` builds uvicorn's ``Config`` with fixed arguments and takes no others;
:func:`apply` hands its server module a ``Config`` that adds these.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import types
from typing import Any

import h11
import uvicorn
from gradio import http_server
from uvicorn.protocols.http.h11_impl import H11Protocol

KEEP_ALIVE_S = 5
REPEATS = 5             # identical log lines a minute before the rest are dropped
REPEAT_WINDOW_S = 60.0


def header_timeout_s() -> float:
    return float(os.environ.get("LYCHEE_HEADER_TIMEOUT_S") or 10)


def max_connections() -> int:
    return int(os.environ.get("LYCHEE_MAX_CONNECTIONS") or 1000)


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers and a cap on connections."""

    waiting: dict[GuardedProtocol, None] = {}  # connections still sending headers, oldest first

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._headers_due: asyncio.TimerHandle | None = None
        self._await_headers()
        if len(self.connections) > max_connections():
            oldest = next((c for c in self.waiting if c is not self), None)
            if oldest is not None:
                oldest._stop_waiting()
                oldest.transport.close()
                self.connections.discard(oldest)  # closing completes later; its place is free now

    def _await_headers(self) -> None:
        self._stop_waiting()
        self.waiting[self] = None
        self._headers_due = self.loop.call_later(header_timeout_s(), self._headers_late)

    def _stop_waiting(self) -> None:
        self.waiting.pop(self, None)
        if self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None

    def _headers_late(self) -> None:
        self.waiting.pop(self, None)
        if not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a request's headers have all come
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers()  # the next request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)


def server_options() -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments added to Gradio's."""
    return {"http": GuardedProtocol, "limit_concurrency": max_connections() + 1,
            "timeout_keep_alive": KEEP_ALIVE_S, "log_config": None}


def apply() -> None:
    """Serve Gradio's ``launch()`` with :func:`server_options`."""
    shim = types.ModuleType("uvicorn")
    shim.__dict__.update(vars(uvicorn))
    shim.Config = functools.partial(uvicorn.Config, **server_options())
    http_server.uvicorn = shim


class RepeatFilter(logging.Filter):
    """Passes at most :data:`REPEATS` records of one logger and message template a minute."""

    def __init__(self, repeats: int = REPEATS, window_s: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self.repeats, self.window_s = repeats, window_s
        self._seen: dict[tuple[str, str], list[float]] = {}  # key: [window start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= self.window_s:
            dropped = int(seen[2]) if seen else 0
            self._seen[key] = [now, 1, 0]
            if len(self._seen) > 10_000:  # many distinct lines: forget the old windows
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window_s}
            if dropped:
                record.msg = f"{record.msg} [{dropped} more like this in the last minute were not logged]"
            return True
        if seen[1] < self.repeats:
            seen[1] += 1
            return True
        seen[2] += 1
        return False


def quiet_repeats() -> None:
    """Every handler of the root logger drops repeated lines (uvicorn's loggers reach it)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter())
