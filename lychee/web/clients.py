"""Who is asking, and threads of the web app's own for blocking work of its async routes."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

# Decoding a reference image or waiting for the scoring slot blocks a thread: these come from
# limiters of their own, never the server's shared pool (starlette's and Gradio's default limiter),
# so slow requests cannot stall the routes that serve the page.
_WORKERS = anyio.CapacityLimiter(16)
_PARSERS = anyio.CapacityLimiter(2)  # JSON request bodies being read


def client_key(headers: Mapping[str, str], peer: str | None) -> str:
    """The address a request comes from: on a Hugging Face Space the last ``X-Forwarded-For`` entry
    (the one its proxy adds; the peer is the proxy), elsewhere the peer's own address."""
    if os.environ.get("SPACE_ID"):
        forwarded = [part.strip() for part in headers.get("x-forwarded-for", "").split(",") if part.strip()]
        if forwarded:
            return forwarded[-1]
    return peer or ""


async def in_worker(work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``work(*args, **kwargs)`` on one of the app's own worker threads."""
    return await anyio.to_thread.run_sync(partial(work, *args, **kwargs), limiter=_WORKERS)


async def in_parser(work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``work(*args, **kwargs)`` on one of the threads that read request bodies."""
    return await anyio.to_thread.run_sync(partial(work, *args, **kwargs), limiter=_PARSERS)
