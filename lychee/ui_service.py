"""The web demo's logic without gradio: a request in, plain records out.

``lychee.ui`` (the only module that imports gradio) and the tests call into this module.
It holds the UI text in two languages, the process's one model (:class:`ModelSlot`),
request validation (the library's one settings validator, after the page's conventions
are translated), and :func:`rerank`, whose :class:`RerankOutcome` defines the JSON schema
of the ``/rerank`` API.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from . import protocol
from .backends import default_backend
from .images import ImageSource, load_query_image, source_label
from .limits import Limits
from .messages import LANGUAGES, Language, Notice, UserError
from .presets import PRESETS
from .query import prepare_text
from .ranking import RerankResult, ScoredImage, WinnerStrength
from .report import Report
from .reranker import LycheeReranker, Progress, default_model, display_name
from .settings import DEFAULT_MAX_SIDE, DEFAULT_TIE_EPSILON, UNSET, Settings, resolve_settings

log = logging.getLogger(__name__)

__all__ = ["LANGUAGES", "Language", "UserError", "ModelSlot", "RerankRequest", "RerankOutcome", "rerank",
           "validate", "text"]

ZERO_GPU_ENV_VAR = "SPACES_ZERO_GPU"  # set by Hugging Face on ZeroGPU Spaces


@cache
def _strings() -> dict[str, dict[str, str]]:
    return json.loads(resources.files("lychee").joinpath("data/ui_strings.json").read_text(encoding="utf-8"))


def text(key: str, lang: Language, **params: Any) -> str:
    """The UI text ``key`` in ``lang``, with ``{placeholders}`` filled from ``params``."""
    return _strings()[key][lang].format(**params)


def on_zero_gpu(environ: Mapping[str, str] | None = None) -> bool:
    """True on a Hugging Face ZeroGPU Space."""
    return bool((os.environ if environ is None else environ).get(ZERO_GPU_ENV_VAR))


@dataclass(frozen=True)
class RerankRequest:
    """One rerank request. ``None`` for ``score_threshold``/``top_k`` means "the preset's
    value" (or keep all without a preset); ``top_k=0`` also means all. :func:`validate`
    returns a cleaned copy, with ``notices`` of what cleaning changed."""

    query: str
    images: Sequence[ImageSource]  # file paths (the file name is the ``source``), bytes, ...
    preset: str | None = None
    score_threshold: float | None = None
    top_k: int | None = None
    instruction: str | None = None
    normalize: bool = False
    tie_epsilon: float = DEFAULT_TIE_EPSILON
    max_side: int = DEFAULT_MAX_SIDE
    labels: Sequence[str] | None = None  # a ``source`` name per image (default: from the file name)
    query_image: ImageSource | None = None  # a reference image: with or without ``query`` text
    query_image_label: str | None = None    # its name (default: from the file name)
    notices: tuple[Notice, ...] = ()

    @property
    def lenient_parsing(self) -> bool:
        return self.settings.lenient_parsing

    @property
    def settings(self) -> Settings:
        """The settings of a validated request."""
        return Settings(PRESETS[self.preset] if self.preset else None, self.score_threshold, self.top_k,
                        self.normalize, self.tie_epsilon, self.max_side)


def _unset_if_none(value: Any) -> Any:
    return UNSET if value is None else value


def validate(request: RerankRequest, limits: Limits) -> RerankRequest:
    """A cleaned copy of ``request``, checked by the library's one validator after the web's
    conventions are translated (empty = the preset's value, ``top_k`` 0 = all), with the
    preset's defaults filled in; ``UserError`` names the first problem."""
    prompt = prepare_text(request.query, request.instruction or None, limits,
                          image_query=request.query_image is not None)
    if not request.images:
        raise UserError("no_images")
    limits.check_image_count(len(request.images))
    top_k = None if request.top_k == 0 and not isinstance(request.top_k, bool) else request.top_k
    settings = resolve_settings(request.preset, score_threshold=_unset_if_none(request.score_threshold),
                                top_k=_unset_if_none(top_k), normalize=request.normalize,
                                tie_epsilon=request.tie_epsilon, max_side=request.max_side)
    reference, label = request.query_image, request.query_image_label
    if reference is not None:  # decoded here, before any GPU time, so a bad one is refused at once
        label = label or source_label(reference, 0)
        reference = load_query_image(reference, max_side=settings.max_side, limits=limits)
    return replace(request, query=prompt.query, images=tuple(request.images), instruction=prompt.instruction,
                   query_image=reference, query_image_label=label, notices=request.notices + prompt.notices,
                   **settings.as_dict())


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


class ModelSlot:
    """The process's one reranker: loaded once, in a background thread, on first need.

    Loading never raises here: a failure is kept and reported to every request as a
    :class:`UserError` that says how to fix it (``LYCHEE_MODEL``, or for ``vllm-server``
    the server's address). ``backend`` (default ``$LYCHEE_BACKEND``) and ``server_url``
    (default ``$LYCHEE_VLLM_URL``) choose the engine; a vLLM server's model is the one it
    serves unless ``model`` or ``$LYCHEE_MODEL`` names it.
    """

    def __init__(self, model: str | None = None, *, device: str | None = None, dtype: str | None = None,
                 limits: Limits | None = None, backend: str | None = None, server_url: str | None = None) -> None:
        self.backend = backend or default_backend()
        self.server_url = server_url
        on_server = self.backend == "vllm-server"
        self.model = model or (os.environ.get(protocol.MODEL_ENV_VAR) if on_server else default_model())
        self.name = display_name(self.model) if self.model else "vLLM server"
        self.device = device or os.environ.get("LYCHEE_DEVICE", "auto")
        self.dtype = dtype or os.environ.get("LYCHEE_DTYPE", "auto")
        self.limits = limits or Limits.from_env()
        # Held while scoring, by every surface: LYCHEE_CONCURRENCY requests score at once, whatever
        # else (fetching their image URLs) other requests are doing meanwhile.
        self.scoring = threading.BoundedSemaphore(self.limits.concurrency)
        self._lock = threading.Lock()
        self._started = False
        self._loaded = threading.Event()
        self._reranker: LycheeReranker | None = None
        self._error: UserError | None = None

    @classmethod
    def for_space(cls, environ: Mapping[str, str] | None = None) -> ModelSlot:
        """The slot of the served app. On a ZeroGPU Space (``SPACES_ZERO_GPU`` set) the model
        is placed on ``cuda`` in bf16 unless ``LYCHEE_DEVICE``/``LYCHEE_DTYPE`` say otherwise,
        and must then be loaded at import time with :meth:`load_now`."""
        environ = os.environ if environ is None else environ
        if on_zero_gpu(environ):
            return cls(device=environ.get("LYCHEE_DEVICE", "cuda"), dtype=environ.get("LYCHEE_DTYPE", "bf16"))
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
            self._reranker = LycheeReranker(self.model, device=self.device, dtype=self.dtype, limits=self.limits,
                                            max_pixels=self.limits.max_visual_tokens * protocol.PATCH_PIXELS ** 2,
                                            backend=self.backend, server_url=self.server_url)
        except UserError as exc:  # no vLLM server answers: the error names its address and the fix
            self._error = exc
            log.warning("%s", exc)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong is shown to the user, with the fix
            self._error = UserError("model_unavailable", model=self.name, reason=failure_reason(self.model or "", exc))
            log.exception("could not load the model %s", self.name)
        finally:
            self._loaded.set()

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
        """What is loaded (model, device, dtype, pixel budget), that it is loading, or why it failed."""
        if not self.settled:
            return text("model_loading", lang, model=self.name)
        if self._reranker is None:
            return "❌ " + self._error.text(lang)
        return text("model_ready", lang, **self._reranker.describe())

    def score(self, request: RerankRequest, *, progress: Progress | None = None) -> list[ScoredImage]:
        """Score every image of a validated request, in input order: the GPU work.

        Past ``limits.request_timeout_s`` the next progress report raises ``UserError``.
        """
        deadline = time.monotonic() + self.limits.request_timeout_s

        def report(done: int, total: int) -> None:
            if time.monotonic() > deadline:
                raise UserError("timeout", seconds=self.limits.request_timeout_s)
            if progress:
                progress(done, total)

        return self.get().score(request.query, request.images, query_image=request.query_image,
                                instruction=request.instruction, labels=request.labels, max_side=request.max_side,
                                lenient_parsing=request.lenient_parsing, progress=report)


@dataclass(frozen=True)
class RerankOutcome:
    """A request and its :class:`~lychee.report.Report` (the JSON and CSV downloads, the API answer)."""

    request: RerankRequest  # validated: preset defaults applied
    report: Report

    @property
    def model(self) -> dict[str, str]:
        return self.report.model

    @property
    def results(self) -> list[RerankResult]:
        return self.report.results

    @property
    def filtered_out(self) -> list[RerankResult]:
        return self.report.filtered_out

    @property
    def errors(self) -> list[RerankResult]:
        return self.report.errors

    @property
    def elapsed_s(self) -> float:
        return self.report.elapsed_s

    @property
    def images_per_s(self) -> float:
        return self.report.images_per_s

    @property
    def winner_strength(self) -> WinnerStrength | None:
        return self.report.winner_strength

    def to_dict(self) -> dict[str, Any]:
        """The ``/rerank`` API's JSON result: :meth:`lychee.report.Report.to_dict`."""
        return self.report.to_dict()

    def to_csv(self) -> str:
        return self.report.to_csv()


def rerank(request: RerankRequest, slot: ModelSlot, *,
           score: Callable[[RerankRequest], list[ScoredImage]] | None = None) -> RerankOutcome:
    """Validate ``request``, score its images with ``score`` (default ``slot.score``) and rank them.

    The JSON form (``RerankOutcome.to_dict()``) is :meth:`lychee.report.Report.to_dict`
    (schema version 4), shared with the CLI's ``--format json``. Bad input raises
    :class:`UserError`; a bad image only becomes an error record.
    """
    request = validate(request, slot.limits)
    model = slot.get().describe()  # waits for the model outside any GPU allocation
    with slot.scoring:
        started = time.perf_counter()
        records = (score or slot.score)(request)
    report = Report.build(request.query, records, request.settings, instruction=request.instruction, model=model,
                          query_image=request.query_image_label,
                          warnings=request.notices, elapsed_s=time.perf_counter() - started)
    return RerankOutcome(request=request, report=report)
