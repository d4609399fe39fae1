"""What may come in through Gradio's API routes, checked at the door (ASGI middleware), before
Gradio parses a body, queues an event or touches a file:

- with ``LYCHEE_API_KEY`` set, every door that reaches the model (or Gradio's uploads and MCP)
  needs ``Authorization: Bearer <key>`` (:data:`KEYED_PATHS`);
- a JSON body may hold at most ``Limits.max_json_values`` values (:func:`lychee.json_values.count_values`),
  so no call within the byte cap costs gigabytes once parsed, or while it waits in the queue;
- a call (``queue/join``, ``call/<api>``) of an internal event (:func:`mark_internal`), or whose file
  records are not uploads of this server (:func:`lychee.web.file_records.foreign_file`), is refused
  before it takes a place in the queue;
- every answer carries ``X-Content-Type-Options: nosniff``: an uploaded file served back is never
  run as HTML or script by a browser that guesses its type.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import weakref
from typing import Any

import anyio
from gradio.route_utils import API_PREFIX
from gradio.utils import get_upload_folder

from ..body_limit import ASGIApp, Message, Receive, Scope, Send
from ..json_values import count_values
from ..messages import bilingual, printable
from .file_records import foreign_file

log = logging.getLogger(__name__)

API_KEY_ENV_VAR = "LYCHEE_API_KEY"
# The doors a key guards: everything that queues an event (the page's Rerank and Explain, /rerank,
# /rerank_urls, /explain, /explain_url, /calibrate), uploads, and MCP. Open: the page and its assets,
# Gradio's config and info, results of events already joined, and /run/* - which, with the queue's
# API closed (``api_open=False``), reaches only the page's unqueued events, none of which scores.
KEYED_PATHS = re.compile(rf"^{API_PREFIX}/(upload|queue/join|call/|stream/|process_recording|mcp)")
# Calls whose body names an event and its inputs.
CALL_PATHS = re.compile(rf"^{API_PREFIX}/(queue/join|call/(?:v2/)?(?P<api_name>[^/]+))/?$")
THREAD_BELOW_BYTES = 2 ** 20  # bodies this small are checked on the event loop (microseconds)
_INTERNAL: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()


def mark_internal(blocks: Any, fn_id: int) -> None:
    """Event ``fn_id`` of ``blocks`` is queued by the server itself: no request may call it."""
    _INTERNAL.setdefault(blocks, set()).add(fn_id)


def authorized(headers: dict[bytes, bytes], key: str | None) -> bool:
    """No key configured, or ``Authorization: Bearer <key>`` (compared in constant time)."""
    if not key:
        return True
    scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


def call_refusal(blocks: Any, path: str, body: Any) -> str | None:
    """The message key refusing a call of an event (``body`` parsed): an internal event, or file
    records that are not uploads; None to let it in."""
    if not isinstance(body, dict):
        return None  # not a call: Gradio's own validation answers it
    fn_id = body.get("fn_index")
    api_name = CALL_PATHS.match(path)["api_name"]
    if api_name is not None:
        fn_id = next((i for i, fn in blocks.fns.items() if fn.api_name == api_name), None)
    if fn_id in _INTERNAL.get(blocks, ()):
        return "internal_event"
    return foreign_file(body.get("data"), get_upload_folder())


class ApiDoors:
    """ASGI middleware over the Gradio app: the checks above. ``max_json_values`` is
    ``Limits.max_json_values``; the key is read from ``LYCHEE_API_KEY`` on each request."""

    def __init__(self, app: ASGIApp, *, max_json_values: int) -> None:
        self.app = app
        self.max_json_values = max_json_values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def nosniff_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-content-type-options"]
                message["headers"] = [*headers, (b"x-content-type-options", b"nosniff")]
            await send(message)

        path = scope.get("path", "")
        headers = dict(scope.get("headers", []))
        if KEYED_PATHS.match(path) and not authorized(headers, os.environ.get(API_KEY_ENV_VAR)):
            await answer(nosniff_send, path, 401, "api_key_required")
            return
        is_json = headers.get(b"content-type", b"").split(b";")[0].strip() == b"application/json"
        if scope.get("method") != "POST" or not path.startswith(API_PREFIX) or not is_json:
            await self.app(scope, receive, nosniff_send)
            return
        body, more = await read_body(receive)
        refusal = await self.check(scope, path, body)
        if refusal is not None:
            await answer(nosniff_send, path, *refusal)
            return
        await self.app(scope, replay(body, more, receive), nosniff_send)

    async def check(self, scope: Scope, path: str, body: bytes) -> tuple[int, str, dict[str, Any]] | None:
        """(status, message key, its parameters) refusing this JSON body, or None."""

        def judge() -> tuple[int, str, dict[str, Any]] | None:
            values = count_values(body, self.max_json_values)
            if values > self.max_json_values:
                return 413, "too_many_values", {"count": f"{values:,}", "limit": f"{self.max_json_values:,}"}
            if not CALL_PATHS.match(path):
                return None
            try:
                parsed = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                return None  # Gradio answers a body that is not JSON
            key = call_refusal(scope["app"].get_blocks(), path, parsed)
            return None if key is None else (422, key, {})

        if len(body) < THREAD_BELOW_BYTES:
            return judge()
        return await anyio.to_thread.run_sync(judge)


async def read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request's body (already capped by :class:`lychee.body_limit.BodyLimit`), and whether
    the client disconnected before it ended."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def replay(body: bytes, disconnected: bool, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` again as one message, then what the client sends next."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent or disconnected:
            return await receive() if sent else {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


async def answer(send: Send, path: str, status: int, key: str, params: dict[str, Any] | None = None) -> None:
    """A refusal: the message in both languages as ``error``, and as ``detail`` in the form
    ``gradio_client`` shows for a refused ``queue/join`` (a validation error)."""
    said = bilingual(key, **(params or {}))
    log.info("refused a call of %s: %s", printable(path[:200]), said)
    detail = [{"__type__": "validate", "is_valid": False, "message": said, "parameter_name": "request"}]
    body = json.dumps({"error": said, "detail": detail}, ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
