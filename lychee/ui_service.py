"""The web demo's logic without gradio: a request in, plain records out.

``lychee.ui`` (the only module that imports gradio) and the tests call into this module.
It holds the UI text in two languages and the bilingual errors a user can fix, the
process's one model (:class:`ModelSlot`), request validation, and :func:`rerank`, whose
:class:`RerankOutcome` defines the JSON schema of the ``/rerank`` API.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from . import ranking
from .images import DEFAULT_MAX_SIDE
from .limits import Limits
from .presets import PRESETS
from .ranking import RerankResult, ScoredImage, WinnerStrength
from .reranker import LycheeReranker, Progress, clean_query, default_model

log = logging.getLogger(__name__)

Language = Literal["zh", "en"]
LANGUAGES: tuple[Language, ...] = ("zh", "en")
SCHEMA_VERSION = 1
MAX_SIDE_RANGE = (64, 4096)


@cache
def _strings() -> dict[str, dict[str, str]]:
    return json.loads(resources.files("lychee").joinpath("data/ui_strings.json").read_text(encoding="utf-8"))


def text(key: str, lang: Language, **params: Any) -> str:
    """The UI text ``key`` in ``lang``, with ``{placeholders}`` filled from ``params``."""
    return _strings()[key][lang].format(**params)


class UserError(ValueError):
    """A problem the user can fix; its message exists in Chinese and English.

    ``str(error)`` is both languages (for API clients); :meth:`text` is one (for the UI).
    """

    def __init__(self, key: str, **params: Any) -> None:
        self.key = key
        self.params = params
        super().__init__(f"{self.text('en')} / {self.text('zh')}")

    def text(self, lang: Language) -> str:
        return text(f"error_{self.key}", lang, **self.params)


@dataclass(frozen=True)
class RerankRequest:
    """One rerank request. ``None`` for ``score_threshold``/``top_k`` means "the preset's
    value" (or keep all without a preset); ``top_k=0`` also means all."""

    query: str
    images: Sequence[str]  # file paths; the file name is each image's ``source`` label
    preset: str | None = None
    score_threshold: float | None = None
    top_k: int | None = None
    instruction: str | None = None
    normalize: bool = False
    tie_epsilon: float = 0.05
    max_side: int = DEFAULT_MAX_SIDE

    @property
    def lenient_parsing(self) -> bool:
        return PRESETS[self.preset].lenient_parsing if self.preset else False


def _in_range(value: Any, low: float, high: float, *, whole: bool = False) -> bool:
    """A real number (not a bool, not NaN) from ``low`` to ``high``; an integer value if ``whole``."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high and (not whole or float(value).is_integer()))


def validate(request: RerankRequest, limits: Limits) -> RerankRequest:
    """A cleaned copy of ``request`` with the preset's defaults filled in; ``UserError`` names
    the first problem."""
    try:
        query = clean_query(request.query or "", limits.max_query_chars)
    except ValueError:
        raise UserError("empty_query") from None
    if not request.images:
        raise UserError("no_images")
    if len(request.images) > limits.max_images:
        raise UserError("too_many_images", max_images=limits.max_images, count=len(request.images))
    preset_name = (request.preset or "").strip() or None
    if preset_name is not None and preset_name not in PRESETS:
        raise UserError("unknown_preset", preset=preset_name, choices=", ".join(PRESETS))
    preset = PRESETS.get(preset_name or "")
    threshold = request.score_threshold if request.score_threshold is not None or not preset \
        else preset.score_threshold
    top_k = request.top_k if request.top_k is not None or not preset else preset.top_k
    if threshold is not None and not _in_range(threshold, 0, 10):
        raise UserError("bad_threshold", value=threshold)
    if top_k is not None and not _in_range(top_k, 0, math.inf, whole=True):
        raise UserError("bad_top_k", value=top_k)
    if not _in_range(request.tie_epsilon, 0, 10):
        raise UserError("bad_tie_epsilon", value=request.tie_epsilon)
    low, high = MAX_SIDE_RANGE
    if not _in_range(request.max_side, low, high, whole=True):
        raise UserError("bad_max_side", low=low, high=high, value=request.max_side)
    return replace(
        request, query=query, images=tuple(request.images), preset=preset_name,
        score_threshold=None if threshold is None else float(threshold), top_k=int(top_k) if top_k else None,
        instruction=(request.instruction or "").strip() or None, normalize=bool(request.normalize),
        tie_epsilon=float(request.tie_epsilon), max_side=int(request.max_side))


def failure_reason(model: str, exc: BaseException) -> str:
    """One line on why ``model`` did not load: a missing directory, or the error's first line."""
    if model.startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
        return "no such directory"
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__).rstrip(".")[:300]


class ModelSlot:
    """The process's one reranker: loaded once, in a background thread, on first need.

    Loading never raises here: a failure is kept and reported to every request as a
    :class:`UserError` that says how to fix it (``LYCHEE_MODEL``).
    """

    def __init__(self, model: str | None = None, *, device: str | None = None, dtype: str | None = None,
                 limits: Limits | None = None) -> None:
        self.model = model or default_model()
        self.device = device or os.environ.get("LYCHEE_DEVICE", "auto")
        self.dtype = dtype or os.environ.get("LYCHEE_DTYPE", "auto")
        self.limits = limits or Limits.from_env()
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None
        self._reranker: LycheeReranker | None = None
        self._failure: str | None = None

    def start_loading(self) -> None:
        """Start loading in the background, once; returns at once."""
        with self._lock:
            if self._loader is None:
                self._loader = threading.Thread(target=self._load, name="lychee-model-loader", daemon=True)
                self._loader.start()

    def _load(self) -> None:
        try:
            self._reranker = LycheeReranker(self.model, device=self.device, dtype=self.dtype, limits=self.limits,
                                            max_pixels=self.limits.max_visual_tokens * 28 * 28)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong is shown to the user, with the fix
            self._failure = failure_reason(self.model, exc)
            log.exception("could not load the model %s", self.model)

    @property
    def settled(self) -> bool:
        """True once loading has finished, successfully or not."""
        return self._loader is not None and not self._loader.is_alive()

    def get(self) -> LycheeReranker:
        """The loaded reranker, waiting for the load if needed; ``UserError`` if it failed."""
        self.start_loading()
        assert self._loader is not None
        self._loader.join()
        if self._reranker is None:
            raise UserError("model_unavailable", model=self.model, reason=self._failure)
        return self._reranker

    def status_line(self, lang: Language) -> str:
        """What is loaded (model, device, dtype), that it is loading, or why it failed."""
        if not self.settled:
            return text("model_loading", lang, model=self.model)
        if self._reranker is None:
            return "❌ " + UserError("model_unavailable", model=self.model, reason=self._failure).text(lang)
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

        return self.get().score(request.query, request.images, instruction=request.instruction,
                                max_side=request.max_side, lenient_parsing=request.lenient_parsing,
                                progress=report)


def left_out_reason(result: RerankResult, request: RerankRequest) -> Literal["below_threshold", "beyond_top_k"]:
    """Why a scored image is not among the results."""
    if request.score_threshold is not None and result.score < request.score_threshold:
        return "below_threshold"
    return "beyond_top_k"


@dataclass(frozen=True)
class RerankOutcome:
    """Everything one rerank produced. ``results``, ``filtered_out`` and ``errors`` share
    one rank sequence: results 1..n, then the filtered-out images, then the failures."""

    request: RerankRequest  # validated: preset defaults applied
    model: dict[str, str]
    results: list[RerankResult]
    filtered_out: list[RerankResult]
    errors: list[RerankResult]
    elapsed_s: float

    @property
    def images_per_s(self) -> float:
        return len(self.request.images) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def winner_strength(self) -> WinnerStrength | None:
        """How decisive #1 is over the best other scored image (``None`` without a #1)."""
        return ranking.winner_strength(self.results + self.filtered_out) if self.results else None

    def to_dict(self) -> dict[str, Any]:
        """The ``/rerank`` API's JSON result (schema version 1); see :func:`rerank`."""
        r = self.request
        return {
            "schema_version": SCHEMA_VERSION,
            "query": r.query,
            "preset": r.preset,
            "settings": {"score_threshold": r.score_threshold, "top_k": r.top_k, "instruction": r.instruction,
                         "normalize": r.normalize, "tie_epsilon": r.tie_epsilon, "max_side": r.max_side},
            "model": dict(self.model),
            "counts": {"images": len(r.images), "results": len(self.results),
                       "filtered_out": len(self.filtered_out), "errors": len(self.errors)},
            "winner_strength": self.winner_strength,
            "results": [x.to_dict() for x in self.results],
            "filtered_out": [{**x.to_dict(), "reason": left_out_reason(x, r)} for x in self.filtered_out],
            "errors": [x.to_dict() for x in self.errors],
            "elapsed_s": round(self.elapsed_s, 4),
            "images_per_s": round(self.images_per_s, 3),
        }

    def to_csv(self) -> str:
        """One row per image, in rank order, with the group it landed in."""
        columns = ["group", "rank", "index", "source", "score", "raw_score", "tied", "reason", "error", "raw_output"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        data = self.to_dict()
        for group in ("results", "filtered_out", "errors"):
            for record in data[group]:
                writer.writerow({**record, "group": group})
        return buffer.getvalue()


def rerank(request: RerankRequest, slot: ModelSlot, *,
           score: Callable[[RerankRequest], list[ScoredImage]] | None = None) -> RerankOutcome:
    """Validate ``request``, score its images with ``score`` (default ``slot.score``) and rank them.

    The JSON form (``RerankOutcome.to_dict()``), schema version 1::

        {"schema_version": 1, "query": str, "preset": str | null,
         "settings": {"score_threshold": float | null, "top_k": int | null, "instruction": str | null,
                      "normalize": bool, "tie_epsilon": float, "max_side": int},
         "model": {"model": str, "device": str, "dtype": str, "attention": str, "mode": str},
         "counts": {"images": int, "results": int, "filtered_out": int, "errors": int},
         "winner_strength": "close" | "clear" | "dominant" | null,
         "results": [record, ...],        # best first, ranks 1..n
         "filtered_out": [record + {"reason": "below_threshold" | "beyond_top_k"}, ...],
         "errors": [record, ...],         # images that could not be scored (score 0.0)
         "elapsed_s": float, "images_per_s": float}

    where ``record`` is ``RerankResult.to_dict()``: ``rank, index`` (position in the
    request), ``source`` (file name), ``score`` (0-10, normalised if asked), ``raw_score``,
    ``tied``, ``raw_output``, ``error``. Bad input raises :class:`UserError`; a bad image
    only becomes an error record.
    """
    request = validate(request, slot.limits)
    model = slot.get().describe()  # waits for the model outside any GPU allocation
    started = time.perf_counter()
    records = (score or slot.score)(request)
    elapsed = time.perf_counter() - started
    groups = ranking.partition(records, score_threshold=request.score_threshold, top_k=request.top_k,
                               normalize=request.normalize, tie_epsilon=request.tie_epsilon)
    return RerankOutcome(request=request, model=model, results=groups.results, filtered_out=groups.filtered_out,
                         errors=groups.errors, elapsed_s=elapsed)
