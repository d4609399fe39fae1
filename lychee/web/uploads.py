"""Disk quotas on Gradio's uploads (``POST /gradio_api/upload``), per client and for the server.

Gradio keeps every upload (and its own cache of shown files) in one folder for an hour; without a
quota, anonymous uploads fill the disk. Before an upload is read, :class:`UploadQuota`

- refuses it when the client's uploads of the last ``keep_s`` seconds and this one would pass
  ``client_bytes`` (the client: the first ``X-Forwarded-For`` address, as the Space's proxy sets it,
  else the peer address);
- when the folder and this upload would pass ``total_bytes``, deletes the oldest entries of the
  folder that are more than ``min_age_s`` old until it fits, and refuses the upload if it still
  does not.

A body without ``Content-Length`` is cut off with 413 the moment it passes what is left.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from ..body_limit import ASGIApp, BodyLimit, Message, Receive, Scope, Send, content_length
from ..limits import env_name
from ..messages import bilingual

log = logging.getLogger(__name__)

CLIENT_VARIABLE = env_name("upload_client_bytes")
TOTAL_VARIABLE = env_name("upload_total_bytes")


@dataclass(frozen=True)
class Entry:
    """A top-level entry of the upload folder (Gradio puts each file in a folder of its own)."""

    path: str
    modified: float
    size: int


def entry_size(path: str) -> int:
    """Bytes of the file, or of every file under the folder, at ``path`` (0 once it is gone)."""
    if not os.path.isdir(path):
        return os.path.getsize(path) if os.path.exists(path) else 0
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
               if os.path.exists(os.path.join(root, name)))


def folder_entries(folder: str) -> list[Entry]:
    """The folder's top-level entries, oldest first."""
    entries = []
    for item in os.scandir(folder) if os.path.isdir(folder) else ():
        try:
            entries.append(Entry(item.path, item.stat(follow_symlinks=False).st_mtime, entry_size(item.path)))
        except FileNotFoundError:
            continue
    return sorted(entries, key=lambda entry: entry.modified)


def to_prune(entries: list[Entry], incoming: int, total_bytes: int, *, now: float, min_age_s: float) -> list[Entry]:
    """The oldest entries (each more than ``min_age_s`` old) whose removal lets ``incoming`` more
    bytes fit under ``total_bytes``; as many as may go when they cannot make room."""
    excess = sum(entry.size for entry in entries) + incoming - total_bytes
    chosen = []
    for entry in entries:
        if excess <= 0 or now - entry.modified <= min_age_s:
            break
        chosen.append(entry)
        excess -= entry.size
    return chosen


class Ledger:
    """Bytes each client uploaded, kept ``keep_s`` seconds (as long as Gradio keeps the files)."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._uploads: defaultdict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._lock = threading.Lock()

    def used(self, client: str, now: float) -> int:
        with self._lock:
            uploads = self._uploads[client]
            while uploads and now - uploads[0][0] > self.keep_s:
                uploads.popleft()
            if not uploads:
                del self._uploads[client]  # no memory kept for clients gone quiet
            return sum(size for _, size in uploads)

    def add(self, client: str, size: int, now: float) -> None:
        with self._lock:
            self._uploads[client].append((now, size))


def client_of(scope: Scope) -> str:
    """Who uploads: the first ``X-Forwarded-For`` address (set by the Space's proxy), else the peer."""
    forwarded = dict(scope.get("headers", [])).get(b"x-forwarded-for", b"").decode("latin-1")
    first = forwarded.split(",")[0].strip()
    return first or (scope.get("client") or ("?",))[0]


class UploadQuota:
    """ASGI middleware: the quotas above on ``POST path`` (Gradio's upload route)."""

    def __init__(self, app: ASGIApp, *, path: str, folder: Callable[[], str], client_bytes: int, total_bytes: int,
                 keep_s: float, min_age_s: float) -> None:
        self.app = app
        self.path = path
        self.folder = folder
        self.client_bytes = client_bytes
        self.total_bytes = total_bytes
        self.ledger = Ledger(keep_s)
        self.min_age_s = min_age_s
        self._disk = threading.Lock()  # one upload at a time measures and prunes the folder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path", "").rstrip("/") != self.path:
            await self.app(scope, receive, send)
            return
        client, now = client_of(scope), time.time()
        declared = content_length(scope)
        client_left = self.client_bytes - self.ledger.used(client, now)
        if declared is not None and declared > client_left:
            await self.refuse(send, "client", self.client_bytes - client_left, self.client_bytes, CLIENT_VARIABLE)
            return
        disk_left = await anyio.to_thread.run_sync(self.make_room, declared or 0, now)
        if declared is not None and declared > disk_left:
            await self.refuse(send, "total", self.total_bytes - disk_left, self.total_bytes, TOTAL_VARIABLE)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        left, variable = min((client_left, CLIENT_VARIABLE), (disk_left, TOTAL_VARIABLE))
        app = self.app if declared is not None else BodyLimit(self.app, max_bytes=max(left, 0), variable=variable)
        try:
            await app(scope, counted, send)
        finally:
            self.ledger.add(client, received, time.time())

    def make_room(self, incoming: int, now: float) -> int:
        """Prune old uploads so ``incoming`` bytes fit if they can; the bytes then left under the quota."""
        with self._disk:
            entries = folder_entries(self.folder())
            pruned = to_prune(entries, incoming, self.total_bytes, now=now, min_age_s=self.min_age_s)
            for entry in pruned:
                remove(entry.path)
            if pruned:
                log.info("upload quota: removed %d old uploads (%d bytes)", len(pruned), sum(e.size for e in pruned))
            return self.total_bytes - sum(entry.size for entry in entries) + sum(entry.size for entry in pruned)

    async def refuse(self, send: Send, scope: str, used: int, limit: int, variable: str) -> None:
        said = bilingual(f"upload_quota_{scope}", used=f"{max(used, 0):,}", limit=f"{limit:,}", variable=variable)
        log.info("refused an upload: %s", said)
        body = json.dumps({"error": said}, ensure_ascii=False).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def remove(path: str) -> None:
    """Delete a file or a folder with what it holds; one already gone is no error."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)
