"""A cap on the size of every HTTP request body, as plain ASGI middleware (no web framework).

A request whose ``Content-Length`` is over the cap is answered 413 before a byte of its
body is read; a body without a length (chunked) is counted as it streams in and cut off
with 413 the moment it passes the cap, so no route ever holds more than the cap in
memory. Upload routes (multipart, written to disk by the server) get their own, larger cap;
their form fields that are not files, which the server keeps in memory, are counted as they
stream by and stop at :data:`MAX_FORM_FIELD_BYTES` each.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from .messages import bilingual, error_body, printable
from .messages import message as message_text

log = logging.getLogger(__name__)

MAX_FORM_FIELD_BYTES = 2 ** 16  # a non-file part of an upload (Gradio's upload route takes files only)

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

    def cap(self, path: str) -> tuple[int, str, bool]:
        """The body limit of requests to ``path``, the variable that sets it, and whether ``path`` uploads."""
        if path.rstrip("/") in self.upload_paths:
            return self.upload_max_bytes, self.upload_variable, True
        return self.max_bytes, self.variable, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap, variable, upload = self.cap(scope.get("path", ""))
        too_large = ("request_too_large", {"limit": f"{cap:,}", "variable": variable})
        declared = content_length(scope)
        if declared is not None and declared > cap:
            await _refuse(scope, send, *too_large)
            return
        fields = FormFieldCounter.for_request(scope) if upload else None
        received = 0
        refusal: tuple[str, dict[str, str]] | None = None
        refused = started = False

        async def counted_receive() -> Message:
            nonlocal received, refusal
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                received += len(body)
                if received > cap:
                    refusal = too_large
                elif fields is not None and not fields.feed(body):
                    refusal = ("form_field_too_large", {"limit": f"{MAX_FORM_FIELD_BYTES:,}"})
                if refusal:
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal refused, started
            if refusal is None or started:  # an answer begun before the cap was passed goes out as it is
                started = started or message["type"] == "http.response.start"
                await send(message)
            elif not refused:  # the app's own answer to a cut-off body (often a 400) becomes the 413
                refused = True
                await _refuse(scope, send, *refusal)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:  # whatever the app made of the cut-off body, raised or wrapped
            if refusal is None or started:
                raise
        if refusal is not None and not refused and not started:
            await _refuse(scope, send, *refusal)


async def _refuse(scope: Scope, send: Send, key: str, params: dict[str, str]) -> None:
    """Answer 413 with the message ``key`` in both languages."""
    log.info("refused a request body on %s: %s", printable(scope.get("path", "")[:200]),
             message_text(key, "en", **params))
    body = json.dumps(error_body(bilingual(key, **params), key, 413), ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class FormFieldCounter:
    """Follows a multipart body as it streams and says when a part that is not a file (a form
    field, which the server holds in memory) passes :data:`MAX_FORM_FIELD_BYTES`."""

    def __init__(self, boundary: bytes) -> None:
        from python_multipart.multipart import MultipartParser

        self._header = [b"", b""]
        self._in_file = False
        self._field_bytes = 0
        self.too_large = False
        self._following = True
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_part_data": self._part_data})

    @classmethod
    def for_request(cls, scope: Scope) -> FormFieldCounter | None:
        """A counter for a multipart request with a boundary; None for any other body."""
        from python_multipart.multipart import parse_options_header

        content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        return cls(boundary) if kind == b"multipart/form-data" and boundary else None

    def feed(self, chunk: bytes) -> bool:
        """Take the next chunk of the body; False once a form field is over the limit."""
        if chunk and self._following and not self.too_large:
            try:
                self._parser.write(chunk)
            except Exception:  # noqa: BLE001 - a malformed body is the upload route's to refuse
                self._following = False
        return not self.too_large

    def _part_begin(self) -> None:
        self._in_file, self._field_bytes = False, 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        name, value = self._header
        if name.lower() == b"content-disposition" and b"filename" in value.lower():
            self._in_file = True
        self._header = [b"", b""]

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file:
            self._field_bytes += end - start
            self.too_large = self.too_large or self._field_bytes > MAX_FORM_FIELD_BYTES
