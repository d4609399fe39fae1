"""A cap on the size of every HTTP request body, as plain ASGI middleware (no web framework).

A request whose ``Content-Length`` is over the cap is answered 413 before a byte of its
body is read; a body without a length (chunked) is counted as it streams in and cut off
with 413 the moment it passes the cap, so no route ever holds more than the cap in
memory. Upload routes (multipart, written to disk by the server) get their own, larger cap.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from .messages import bilingual, printable

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """Raised inside the wrapped app's ``receive`` once the body passes the cap."""


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` (``upload_max_bytes`` on the
    paths in ``upload_paths``) with HTTP 413 and a bilingual JSON error naming the variable
    that sets the cap."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, variable: str, upload_max_bytes: int | None = None,
                 upload_variable: str = "", upload_paths: Collection[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.variable = variable
        self.upload_max_bytes = upload_max_bytes or max_bytes
        self.upload_variable = upload_variable or variable
        self.upload_paths = frozenset(path.rstrip("/") for path in upload_paths)

    def cap(self, path: str) -> tuple[int, str]:
        """The body limit of requests to ``path`` and the variable that sets it."""
        if path.rstrip("/") in self.upload_paths:
            return self.upload_max_bytes, self.upload_variable
        return self.max_bytes, self.variable

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap, variable = self.cap(scope.get("path", ""))
        declared = _content_length(scope)
        if declared is not None and declared > cap:
            await self._refuse(scope, send, cap, variable)
            return
        received = 0
        exceeded = refused = started = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal refused, started
            if not exceeded or started:  # an answer begun before the cap was passed goes out as it is
                started = started or message["type"] == "http.response.start"
                await send(message)
            elif not refused:  # the app's own answer to a cut-off body (often a 400) becomes the 413
                refused = True
                await self._refuse(scope, send, cap, variable)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:  # whatever the app made of the cut-off body, raised or wrapped
            if not exceeded or started:
                raise
        if exceeded and not refused and not started:
            await self._refuse(scope, send, cap, variable)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, cap: int, variable: str) -> None:
        log.info("refused a request body over %s bytes on %s", f"{cap:,}", printable(scope.get("path", "")[:200]))
        body = json.dumps({"error": bilingual("request_too_large", limit=f"{cap:,}", variable=variable)},
                          ensure_ascii=False).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
