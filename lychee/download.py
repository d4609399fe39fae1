"""A hub model's first download, before it is loaded, and how far it has got: bytes written of
the total, the recent speed, the time left. Pure: no torch, no gradio.

``from_pretrained`` would fetch the same files, but only a terminal would see its progress.
:func:`download` fetches them first with :func:`huggingface_hub.snapshot_download` into the
same cache (``from_pretrained`` then finds them there) and counts the bytes that
huggingface_hub's own progress bars are fed, over plain HTTP and hf_xet alike. The bars print
as they always do; where they are hidden (no terminal: a server's log) a line is logged every
``LOG_EVERY_S`` seconds instead.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import DryRunError, HFValidationError, LocalEntryNotFoundError
from huggingface_hub.utils import tqdm as hub_tqdm
from huggingface_hub.utils import validate_repo_id

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
SPEED_WINDOW_S = 10.0
# The bar snapshot_download feeds with the bytes of every file written to the cache (its other
# bars count files, or network bytes that hf_xet may compress below the files' size).
BYTES_BAR = "huggingface_hub.snapshot_download"


class DownloadError(OSError):
    """The model's files could not be fetched from the Hub; the message names the cause."""


@dataclass(frozen=True)
class DownloadProgress:
    """One reading of a download: bytes written, bytes to fetch (None until known) and the recent
    speed in bytes per second (None until bytes arrive)."""

    done: int
    total: int | None = None
    speed: float | None = None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the recent speed; None while the total or the speed is unknown."""
        if self.total is None or not self.speed:
            return None
        return max(self.total - self.done, 0) / self.speed


class DownloadTracker:
    """Counts a download's bytes as they arrive, from any thread; :meth:`progress` reads it.

    The speed is measured over the last ``window_s`` seconds, up to the moment it is read: it
    follows the connection, and falls while the download stalls. It is None for the first
    ``min_span_s`` seconds, when one small file would make it up.
    """

    def __init__(self, *, window_s: float = SPEED_WINDOW_S, min_span_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self.clock = clock
        self._lock = threading.Lock()
        self._done = 0
        self._total: int | None = None
        self._samples: deque[tuple[float, int]] = deque()  # (time, bytes done); the first one opens the window

    def plan(self, total: int) -> None:
        """The bytes to fetch are known: the clock of the speed starts."""
        with self._lock:
            self._total = total
            self._sample()

    def add(self, count: float, total: float | None = None) -> None:
        """``count`` more bytes were written (negative: a retry dropped some); ``total`` is another
        estimate of the bytes to fetch, kept when it is larger."""
        with self._lock:
            self._done += int(count)
            if total:
                self._total = max(self._total or 0, int(total))
            self._sample()

    def _sample(self) -> None:
        now = self.clock()
        self._samples.append((now, self._done))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def progress(self) -> DownloadProgress:
        """The download as it stands now."""
        with self._lock:
            if not self._samples:
                return DownloadProgress(self._done, self._total)
            since, done_then = self._samples[0]
            elapsed = self.clock() - since
            measured = elapsed > 0 and elapsed >= self.min_span_s and self._done > done_then
            speed = (self._done - done_then) / elapsed if measured else None
            return DownloadProgress(self._done, self._total, speed)


def needs_download(model: str, *, cache_dir: str | Path | None = None) -> bool:
    """True when ``model`` is a hub id that is not complete in the local cache and the Hub may be
    asked; False for a local path, or offline (``HF_HUB_OFFLINE``). Reads only the disk."""
    if constants.is_offline_mode() or model.startswith(("/", ".", "~")) or Path(model).expanduser().exists():
        return False
    try:
        validate_repo_id(model)
    except HFValidationError:  # not a hub id: from_pretrained says what it is not
        return False
    try:
        snapshot_download(model, local_files_only=True, cache_dir=cache_dir)
    except LocalEntryNotFoundError:  # never downloaded, or incomplete (IncompleteSnapshotError)
        return True
    return False


def download(repo_id: str, tracker: DownloadTracker | None = None, *, cache_dir: str | Path | None = None,
             endpoint: str | None = None) -> str:
    """Fetch the files of the hub model ``repo_id`` that the cache lacks; returns its snapshot folder.

    ``tracker`` follows the download: its total comes first (a dry run lists what will be fetched),
    then the bytes as they are written. ``cache_dir`` and ``endpoint`` default to huggingface_hub's
    (``HF_HUB_CACHE``, ``HF_ENDPOINT``). Any failure raises :class:`DownloadError` with its cause.
    """
    tracker = tracker or DownloadTracker()
    where: dict[str, Any] = {"cache_dir": cache_dir, "endpoint": endpoint}
    try:
        plan = [f for f in snapshot_download(repo_id, dry_run=True, tqdm_class=_QuietBar, **where) if f.will_download]
        total = sum(f.file_size or 0 for f in plan)
        tracker.plan(total)
        log.info("downloading %s: %s in %d files", repo_id, human_size(total), len(plan))
        started = time.monotonic()
        folder = snapshot_download(repo_id, tqdm_class=_tracking_bar(tracker, repo_id), **where)
    except Exception as exc:  # noqa: BLE001 - whatever failed (network, Hub, disk) is reported as the cause
        raise DownloadError(f"the download from the Hub failed: {_cause(exc)}") from exc
    log.info("downloaded %s in %s", repo_id, human_duration(time.monotonic() - started))
    return folder


def _cause(exc: BaseException) -> str:
    """The error on one line; for a dry run that could not reach the Hub, the reason it could not."""
    if isinstance(exc, DryRunError) and exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2]) or type(exc).__name__


class _QuietBar(hub_tqdm):
    """A bar that never prints: the dry run that plans the download is no news."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "disable": True})


def _tracking_bar(tracker: DownloadTracker, repo_id: str) -> type[hub_tqdm]:
    """huggingface_hub's own bar, which also tells ``tracker`` the bytes written, and logs the
    progress every ``LOG_EVERY_S`` seconds where the bar is hidden."""
    last_logged = [time.monotonic()]

    class TrackingBar(hub_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.counts_bytes = kwargs.get("name") == BYTES_BAR
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if self.counts_bytes:
                tracker.add(n or 0, self.total)
                now = time.monotonic()
                if self.disable and now - last_logged[0] >= LOG_EVERY_S:
                    last_logged[0] = now
                    log.info("downloading %s: %s", repo_id, summary(tracker.progress()))
            return super().update(n)

    return TrackingBar


_UNITS = ("B", "kB", "MB", "GB", "TB")


def _scale(count: float) -> tuple[int, str]:
    """The largest decimal unit in which ``count`` is at least 1 (bytes below 1 kB)."""
    power = 0
    while power < len(_UNITS) - 1 and count >= 1000 ** (power + 1):
        power += 1
    return 1000**power, _UNITS[power]


def human_size(count: float) -> str:
    """``16.6 GB``, ``350 MB``, ``512 B``: decimal units, one decimal below 100."""
    return human_amount(None, count)


def human_amount(done: float | None, total: float) -> str:
    """``3.2 / 16.6 GB``: both in the unit of ``total``, one decimal below 100 (``total`` alone
    when ``done`` is None)."""
    scale, unit = _scale(total)
    decimals = 1 if unit != "B" and total / scale < 100 else 0
    size = f"{total / scale:.{decimals}f} {unit}"
    return size if done is None else f"{done / scale:.{decimals}f} / {size}"


def human_speed(bytes_per_s: float) -> str:
    """``48 MB/s``, ``4.8 MB/s``: one decimal below 10."""
    scale, unit = _scale(bytes_per_s)
    value = bytes_per_s / scale
    return f"{value:.{1 if unit != 'B' and value < 10 else 0}f} {unit}/s"


def human_duration(seconds: float, units: tuple[str, str, str] = ("h", "min", "s")) -> str:
    """``4 min 40 s``, ``1 h 5 min``, ``40 s``: the two largest parts, whole seconds rounded up,
    named by ``units`` (hours, minutes, seconds)."""
    hours, rest = divmod(max(0, math.ceil(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    hour, minute, second = units
    if hours:
        return f"{hours} {hour} {minutes} {minute}"
    return f"{minutes} {minute} {secs} {second}" if minutes else f"{secs} {second}"


def summary(progress: DownloadProgress, time_left: Callable[[float], str] = lambda s: f"{human_duration(s)} left",
            starting: str = "starting") -> str:
    """The download in one line: ``3.2 / 16.6 GB · 48 MB/s · 4 min 40 s left`` (English, for logs,
    unless ``time_left`` says the seconds left another way), or ``starting`` while the total is unknown."""
    if progress.total is None:
        return starting
    parts = [human_amount(progress.done, progress.total)]
    if progress.speed:
        parts.append(human_speed(progress.speed))
    if progress.eta_s is not None:
        parts.append(time_left(progress.eta_s))
    return " · ".join(parts)
