"""Resident memory handed back to the system after large work (glibc only; elsewhere a no-op).

Freed memory stays with the process: glibc keeps freed heap pages in its arenas (one per thread
that allocated, up to 8 x cores of them), and after one 100 MB request body the server held
gigabytes it no longer used. :func:`limit_arenas` caps the arenas (``MALLOC_ARENA_MAX`` set from
inside the process, before its threads start) and maps large blocks alone; :func:`release_soon`
runs ``malloc_trim(0)`` on a thread of its own after a request, at most once every
:data:`TRIM_INTERVAL_S`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

ARENAS = 2  # malloc arenas for the whole process; more only help allocation-bound thread pools
MMAP_THRESHOLD = 4 * 2 ** 20  # blocks this large are mapped alone and go back to the system when freed
TRIM_INTERVAL_S = 1.0
TRIM_DELAY_S = 0.5  # the request that asked is answered and its objects are freed by then
_M_ARENA_MAX, _M_MMAP_THRESHOLD = -8, -3  # glibc's mallopt parameter numbers

_trim_lock = threading.Lock()
_last_trim = 0.0
_pending = False


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def limit_arenas(count: int | None = None) -> None:
    """At most ``count`` malloc arenas (``MALLOC_ARENA_MAX`` when set, else :data:`ARENAS`), and a fixed
    :data:`MMAP_THRESHOLD`: glibc raises its own after each large free, up to 32 MB, and then the
    16 MB blocks of a decoded image stay in the heap once freed."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_ARENA_MAX, count or int(os.environ.get("MALLOC_ARENA_MAX") or ARENAS))
        _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release() -> None:
    """Hand every free page of the heap back to the system now (it takes a few milliseconds)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def release_soon() -> None:
    """:func:`release` on a thread of its own, unless one ran or waits within the interval."""
    global _pending
    with _trim_lock:
        if _pending:
            return
        _pending = True
    threading.Thread(target=_trim_after_interval, name="lychee-trim", daemon=True).start()


def _trim_after_interval() -> None:
    global _pending, _last_trim
    time.sleep(max(TRIM_DELAY_S, _last_trim + TRIM_INTERVAL_S - time.monotonic()))
    with _trim_lock:
        _pending = False
    release()
    _last_trim = time.monotonic()
