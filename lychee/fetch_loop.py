"""Where image URLs are fetched: one event loop on a thread of its own for the whole process,
and the places to fetch on it.

A download waits on sockets, so it takes no thread: not one of the web server's shared pool
(41 hanging URLs there stalled every route of the site), and not the caller's event loop either
(unpacking a body costs CPU). Whoever asks waits - on its own loop (:meth:`FetchLoop.wait`)
or in its own thread (:meth:`FetchLoop.run`) - while the work runs here.

At most ``LYCHEE_FETCH_CONCURRENCY`` requests fetch from the network at once, and at most
:data:`PER_CLIENT` of them for one client: a client over its share is refused at once, and a
request that finds no free place before its URL deadline is refused then (:class:`FetchBusy`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from .limits import env_name
from .messages import UserError

PER_CLIENT = 2  # requests of one client fetching at once; its next one is refused until one ends

T = TypeVar("T")


class FetchBusy(UserError):
    """No place to fetch: this client already fetches :data:`PER_CLIENT` requests, or every place
    stayed taken until the request's deadline. Try again shortly (HTTP 429)."""


class FetchPlaces:
    """Requests fetching at once, overall and per client; used only on the fetch loop."""

    def __init__(self) -> None:
        self._room = asyncio.Condition()
        self._in_use = 0
        self._clients: Counter[str] = Counter()

    @asynccontextmanager
    async def hold(self, client: str, capacity: int, deadline: float) -> AsyncIterator[None]:
        """A place among ``capacity`` for ``client``'s request until the block ends; waits no later
        than ``deadline`` (the loop's clock)."""
        if self._clients[client] >= PER_CLIENT:
            raise FetchBusy("fetch_busy_client", count=PER_CLIENT)
        self._clients[client] += 1
        try:
            async with self._room:
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._room.wait_for(lambda: self._in_use < capacity)
                except TimeoutError:
                    raise FetchBusy("fetch_busy", count=capacity, variable=env_name("fetch_concurrency")) from None
                self._in_use += 1
            try:
                yield
            finally:
                async with self._room:
                    self._in_use -= 1
                    self._room.notify_all()
        finally:
            self._clients[client] -= 1
            if not self._clients[client]:
                del self._clients[client]


class FetchLoop:
    """An event loop on a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._forget()
        os.register_at_fork(after_in_child=self._forget)  # a forked child has the loop but not its thread

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.places = FetchPlaces()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="lychee-fetch", daemon=True).start()
            return self._loop

    def submit(self, work: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``work`` on the fetch loop."""
        return asyncio.run_coroutine_threadsafe(work, self._started())

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the fetch loop; this thread waits for it."""
        return self.submit(work).result()

    async def wait(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the fetch loop; the calling loop awaits it, no thread held. Cancelled
        with the caller (a client that went away stops its downloads)."""
        future = self.submit(work)
        try:
            return await asyncio.wrap_future(future)
        finally:
            future.cancel()


FETCH_LOOP = FetchLoop()
