"""The process's one model (:class:`ModelSlot`): loaded once, in the background, downloaded first when the
hub cache lacks it, with the page's model line and the scoring call that every web surface shares."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .. import protocol
from ..backends import default_backend
from ..backends.base import Progress, StageProgress
from ..download import DownloadProgress, DownloadTracker, download, human_duration, needs_download, summary
from ..limits import Limits
from ..messages import Language, UserError
from ..ranking import ScoredImage
from ..reranker import LycheeReranker, default_model, display_name
from ..settings import UNSET, Unset
from ..store import ScoreStore, StoreError, open_store, server_store_path
from ..zero_gpu import gpu_seconds, images_within, on_zero_gpu
from .i18n import text

if TYPE_CHECKING:
    from .service import Job

log = logging.getLogger(__name__)


_PATH = re.compile(r"(?<![\w:/])(?:~|\.{1,2})?(?:/[^\s/'\"]+)+/?")


def hide_paths(message: str) -> str:
    """``message`` with every file-system path shortened to its last part (no server paths shown)."""
    return _PATH.sub(lambda m: Path(m.group().rstrip("/")).name or m.group(), message)


def failure_reason(model: str, exc: BaseException) -> str:
    """One line on why ``model`` did not load: a missing directory, or the error's first line
    (without server paths)."""
    if model.startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
        return "no such directory"
    lines = str(exc).strip().splitlines()
    return hide_paths((lines[0] if lines else type(exc).__name__).rstrip(".")[:300])


def download_line(model: str, progress: DownloadProgress, lang: Language) -> str:
    """The model line while ``model``'s weights download: bytes of the total, speed and time left
    as far as they are known, or that it is starting while the total is not."""
    if progress.total is None:
        return text("model_download_starting", lang, model=model)
    units = (text("unit_hours", lang), text("unit_minutes", lang), text("unit_seconds", lang))
    said = summary(progress, lambda s: text("download_time_left", lang, duration=human_duration(s, units)))
    return text("model_downloading", lang, model=model, progress=said)


class ModelSlot:
    """The process's one reranker: loaded once, in a background thread, on first need.

    A hub model that the local cache lacks is downloaded first (:mod:`lychee.download`), and
    :attr:`download_progress` follows it; a local checkpoint, a cached model, ``HF_HUB_OFFLINE``
    or a vLLM server goes straight to loading.

    Loading never raises here: a failure is kept and reported to every request as a
    :class:`UserError` that says how to fix it (``LYCHEE_MODEL``, or for ``vllm-server``
    the server's address). ``backend`` (default ``$LYCHEE_BACKEND``) and ``server_url``
    (default ``$LYCHEE_VLLM_URL``) choose the engine; a vLLM server's model is the one it
    serves unless ``model`` or ``$LYCHEE_MODEL`` names it. ``store`` (default
    :func:`lychee.store.server_store_path`) keeps every score for every later request; a file
    that cannot be a store is logged and the app serves without one.
    """

    def __init__(self, model: str | None = None, *, device: str | None = None, dtype: str | None = None,
                 limits: Limits | None = None, backend: str | None = None, server_url: str | None = None,
                 store: str | os.PathLike | ScoreStore | None | Unset = UNSET) -> None:
        self.backend = backend or default_backend()
        self.server_url = server_url
        on_server = self.backend == "vllm-server"
        self.model = model or (os.environ.get(protocol.MODEL_ENV_VAR) if on_server else default_model())
        self.name = display_name(self.model) if self.model else "vLLM server"
        self.device = device or os.environ.get("LYCHEE_DEVICE") or "auto"  # set but empty: the default
        self.dtype = dtype or os.environ.get("LYCHEE_DTYPE") or "auto"
        self.limits = limits or Limits.from_env()
        self.store = server_store_path() if store is UNSET else store  # shared by every user and restart
        # Held while scoring, by every surface: LYCHEE_CONCURRENCY requests score at once, whatever
        # else (fetching their image URLs) other requests are doing meanwhile.
        self.scoring = threading.BoundedSemaphore(self.limits.concurrency)
        self._lock = threading.Lock()
        self._started = False
        self._loaded = threading.Event()
        self._reranker: LycheeReranker | None = None
        self._error: UserError | None = None
        self._download: DownloadTracker | None = None  # while the weights download

    @classmethod
    def for_space(cls, environ: Mapping[str, str] | None = None) -> ModelSlot:
        """The slot of the served app. On a ZeroGPU Space (``SPACES_ZERO_GPU`` set) the model
        is placed on ``cuda`` in bf16 unless ``LYCHEE_DEVICE``/``LYCHEE_DTYPE`` say otherwise,
        and must then be loaded at import time with :meth:`load_now`."""
        environ = os.environ if environ is None else environ
        if on_zero_gpu(environ):
            return cls(device=environ.get("LYCHEE_DEVICE") or "cuda", dtype=environ.get("LYCHEE_DTYPE") or "bf16")
        return cls()

    def start_loading(self) -> None:
        """Start loading in a background thread, once; returns at once."""
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._load, name="lychee-model-loader", daemon=True).start()

    def load_now(self) -> None:
        """Load in the calling thread, once (ZeroGPU wants the model placed at import time)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self._load()

    def _load(self) -> None:
        try:
            self._download_weights()
            self._reranker = LycheeReranker(self.model, device=self.device, dtype=self.dtype, limits=self.limits,
                                            max_pixels=self.limits.max_visual_tokens * protocol.PATCH_PIXELS ** 2,
                                            backend=self.backend, server_url=self.server_url,
                                            store=self._open_store())
        except UserError as exc:  # no vLLM server answers: the error names its address and the fix
            self._error = exc
            log.warning("%s", exc)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong is shown to the user, with the fix
            # A checkpoint that cannot be found, fetched or read raises OSError or ValueError; a RuntimeError
            # (CUDA, out of memory, a kernel) is not fixed by pointing LYCHEE_MODEL elsewhere.
            key = "model_load_failed" if isinstance(exc, RuntimeError) else "model_unavailable"
            self._error = UserError(key, model=self.name, reason=failure_reason(self.model or "", exc),
                                    device=self.device, dtype=self.dtype)
            log.exception("could not load the model %s", self.name)
        finally:
            self._loaded.set()

    def _open_store(self) -> ScoreStore | None:
        try:
            return open_store(self.store)
        except StoreError as exc:  # the scores are then only not kept: no reason to refuse every request
            log.error("%s; serving without a score store", exc)
            return None

    def _download_weights(self) -> None:
        """Fetch a hub model the cache lacks into it, following the download; a failure raises
        :class:`~lychee.download.DownloadError` (an ``OSError``: ``model_unavailable``)."""
        if self.backend == "vllm-server" or not self.model or not needs_download(self.model):
            return
        self._download = DownloadTracker()
        try:
            download(self.model, self._download)
        finally:
            self._download = None

    @property
    def download_progress(self) -> DownloadProgress | None:
        """How far the weights' download has got while it runs; None before, after or without one."""
        tracker = self._download
        return tracker.progress() if tracker is not None else None

    @property
    def settled(self) -> bool:
        """True once loading has finished, successfully or not."""
        return self._loaded.is_set()

    def get(self) -> LycheeReranker:
        """The loaded reranker, waiting for the load if needed; ``UserError`` if it failed.

        A vLLM server that was down is asked again on each request: it may have started since.
        """
        self.start_loading()
        self._loaded.wait()
        if self._reranker is None and self.backend == "vllm-server":
            self._load()
        if self._reranker is None:
            raise self._error
        return self._reranker

    def status_line(self, lang: Language) -> str:
        """What is loaded (model, device, dtype, pixel budget), how far its download has got, that it
        is loading, or why it failed."""
        if not self.settled:
            progress = self.download_progress
            if progress is not None:
                return download_line(self.name, progress, lang)
            return text("model_loading", lang, model=self.name)
        if self._reranker is None:
            return "❌ " + self._error.text(lang)
        return text("model_ready", lang, **self._reranker.describe())

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights ZeroGPU moves onto a fresh worker's GPU (0 for a vLLM server's: not moved here)."""
        return getattr(self.get().backend, "weight_bytes", 0)

    def gpu_seconds(self, passes: int, *, explaining: bool = False) -> int:
        """The ZeroGPU duration to reserve for ``passes`` forward passes (:func:`lychee.zero_gpu.gpu_seconds`):
        one per image scored, or an explanation's cells and its image; at most ``limits.request_timeout_s``.
        ``UserError`` (``gpu_time``, or ``gpu_time_passes`` for an explanation) when it would pass
        ``limits.gpu_max_seconds``."""
        seconds = gpu_seconds(passes, self.weight_bytes)
        if seconds > self.limits.gpu_max_seconds:
            fit = images_within(self.limits.gpu_max_seconds, self.weight_bytes)
            key, fit = ("gpu_time_passes", max(0, fit - 1)) if explaining else ("gpu_time", fit)
            raise UserError(key, seconds=seconds, limit=self.limits.gpu_max_seconds, count=passes, fit=fit)
        return min(seconds, self.limits.request_timeout_s)

    def score(self, job: Job, *, progress: StageProgress | None = None, stop: Callable[[], bool] | None = None,
              seconds: float | None = None) -> list[ScoredImage]:
        """Score every image of an accepted job, in input order: the GPU work.

        ``progress(stage, done, total)`` follows decoding and scoring. The next report past ``seconds``
        (default ``limits.request_timeout_s``), or after ``stop()`` turned true, raises ``UserError``.
        """
        guard = self.deadline(stop=stop, seconds=seconds)

        def report(stage: str, done: int, total: int) -> None:
            guard(done, total)
            if progress:
                progress(stage, done, total)

        return self.get().score_request(job.request, job.images, texts=job.texts, labels=job.labels,
                                        stages=report)

    def deadline(self, progress: Progress | None = None, *, stop: Callable[[], bool] | None = None,
                 seconds: float | None = None) -> Progress:
        """A progress callback that passes reports on to ``progress`` and, past ``seconds`` (default
        ``limits.request_timeout_s``) from now, raises ``UserError('timeout')`` instead - or
        ``UserError('cancelled')`` once ``stop()`` is true."""
        # An explicit limit is the GPU time reserved for the call: its own message, about the reservation.
        key, seconds = ("timeout", self.limits.request_timeout_s) if seconds is None else ("gpu_timeout", seconds)
        deadline = time.monotonic() + seconds

        def report(done: int, total: int) -> None:
            if stop is not None and stop():
                raise UserError("cancelled")
            if time.monotonic() > deadline:
                raise UserError(key, seconds=seconds)
            if progress:
                progress(done, total)

        return report
