"""``LycheeReranker``: the public entry point - images and a query in, ranked records out."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from PIL import Image

from . import protocol, ranking
from .engine import Engine, run_batched
from .images import DEFAULT_MAX_SIDE, ImageLoadError, ImageSource, load_image, source_label
from .limits import Limits
from .parsing import parse_score
from .presets import UNSET, get_preset, preset_value
from .ranking import RerankResult, ScoredImage

log = logging.getLogger(__name__)

Mode = Literal["logit", "generate"]
Progress = Callable[[int, int], None]

_CONTROL_TOKEN = re.compile(r"<\|[^<>|\s]{1,40}\|>")  # Qwen's <|im_start|>, <|image_pad|>, ...
LOAD_THREADS = 8  # image decoding threads at most


class RerankError(RuntimeError):
    """Raised by ``rerank(..., raise_on_error=True)`` when any image failed."""


def default_model() -> str:
    """``$LYCHEE_MODEL`` if set, else the hub id of lychee-rerank-mm."""
    return os.environ.get(protocol.MODEL_ENV_VAR) or protocol.DEFAULT_MODEL


def clean_query(query: str, max_chars: int) -> str:
    """Strip ``query`` and any chat-template control tokens in it (``<|image_pad|>``...);
    reject an empty one; cut one longer than ``max_chars`` (with a warning)."""
    if isinstance(query, str) and _CONTROL_TOKEN.search(query):
        log.warning("removed chat-template control tokens from the query")
        query = _CONTROL_TOKEN.sub(" ", query)
    if not isinstance(query, str) or not query.strip():
        raise ValueError("the query is empty; describe what the image should show")
    query = query.strip()
    if len(query) > max_chars:
        log.warning("query of %d characters truncated to %d", len(query), max_chars)
        query = query[:max_chars]
    return query


class LycheeReranker:
    """Score and rank images against a Chinese/English/mixed text query.

    ``model`` is a hub id or a local directory (default ``$LYCHEE_MODEL`` or
    ``vec-ai/lychee-rerank-mm``). ``mode="logit"`` is the lychee-rerank-mm protocol
    (p(yes) of a yes/no judgement); ``mode="generate"`` asks a generic instruction-tuned
    VLM for a 0-10 score as text and parses it.

    ``batch_size``: pairs per forward pass; None picks it from free GPU memory on CUDA
    (8 elsewhere). ``vision_cache_bytes``: bound of the cache of image features that lets
    a new query over the same images skip the vision tower (None: ``$LYCHEE_VISION_CACHE_MB``
    or 1 GiB; 0: off). ``engine``: an :class:`~lychee.engine.Engine` already in memory
    (the benchmarks' random 7B); the loading arguments are then unused.
    """

    def __init__(self, model: str | None = None, device: str = "auto", dtype: str = "auto", *,
                 mode: Mode = "logit", batch_size: int | None = None, min_pixels: int | None = None,
                 max_pixels: int | None = None, max_side: int = DEFAULT_MAX_SIDE,
                 limits: Limits | None = None, vision_cache_bytes: int | None = None,
                 engine: Engine | None = None) -> None:
        if mode not in ("logit", "generate"):
            raise ValueError(f"mode must be 'logit' or 'generate', got {mode!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.mode: Mode = mode
        self.batch_size = batch_size
        self.max_side = max_side
        self.limits = limits or Limits.from_env()
        self.engine = engine or Engine.load(model or default_model(), device=device, dtype=dtype,
                                            min_pixels=min_pixels, max_pixels=max_pixels,
                                            need_yes_no=mode == "logit", vision_cache_bytes=vision_cache_bytes)
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    def describe(self) -> dict[str, str]:
        """What is loaded: model, device, dtype, attention, mode."""
        e = self.engine
        return {"model": e.model_id, "device": str(e.device), "dtype": e.dtype_name,
                "attention": e.attention, "mode": self.mode}

    def score(self, query: str, images: Sequence[ImageSource], *, instruction: str | None = None,
              labels: Sequence[str] | None = None, max_side: int | None = None,
              lenient_parsing: bool = False, progress: Progress | None = None,
              start: int = 0) -> list[ScoredImage]:
        """Score every image, in input order; nothing is filtered. Failures carry ``error``.

        ``start`` is the position of ``images[0]`` in a longer list that a caller scores in
        chunks: records and messages then carry the position in that list. More than
        ``LYCHEE_MAX_IMAGES`` images raise :class:`~lychee.limits.LimitExceeded`.
        """
        query = clean_query(query, self.limits.max_query_chars)
        self.limits.check_image_count(len(images))
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"got {len(labels)} labels for {len(images)} images")
        names = list(labels) if labels is not None else [source_label(s, start + i) for i, s in enumerate(images)]

        def problem(i: int, cause: object) -> str:
            message = f"image {start + i + 1} '{names[i]}': {cause}"
            log.warning("%s", message)
            return message

        loaded: dict[int, Image.Image] = {}
        errors: dict[int, str] = {}
        for i, outcome in enumerate(self._load_all(images, max_side or self.max_side)):
            if isinstance(outcome, ImageLoadError):
                errors[i] = problem(i, outcome)
            else:
                loaded[i] = outcome
        outputs = self._score_loaded(query, instruction, loaded, lenient_parsing, progress,
                                     total=len(images), already_done=len(errors))
        records = []
        for i in range(len(images)):
            if i in errors:
                records.append(ScoredImage(start + i, names[i], 0.0, "", errors[i]))
                continue
            value, raw_output, cause = outputs[i]
            records.append(ScoredImage(start + i, names[i], value, raw_output, cause and problem(i, cause)))
        return records

    def _load_all(self, images: Sequence[ImageSource], max_side: int) -> list[Image.Image | ImageLoadError]:
        """Decode ``images`` on a few threads (Pillow's decoders release the GIL)."""
        def load(source: ImageSource) -> Image.Image | ImageLoadError:
            try:
                return load_image(source, max_side=max_side, limits=self.limits)
            except ImageLoadError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=min(LOAD_THREADS, os.cpu_count() or 1)) as pool:
            return list(pool.map(load, images))

    def _score_loaded(self, query: str, instruction: str | None, loaded: dict[int, Image.Image],
                      lenient: bool, progress: Progress | None, *, total: int,
                      already_done: int) -> dict[int, tuple[float, str, str | None]]:
        keys = list(loaded)
        if self.mode == "logit":
            prompt = self.engine.render(protocol.rerank_messages(query, instruction))
            fn = lambda batch: self._logit_batch(prompt, batch)  # noqa: E731
        else:
            prompt = self.engine.render(protocol.generate_messages(query, instruction))
            fn = lambda batch: self._generate_batch(prompt, batch, lenient)  # noqa: E731

        def report(done: int, _: int) -> None:
            if progress:
                progress(already_done + done, total)

        batch = [loaded[k] for k in keys]
        with self._lock:
            results = run_batched(batch, fn, batch_size=self.engine.batch_size(batch, self.batch_size),
                                  cost=self.engine.visual_tokens, progress=report)
        if progress and not keys:
            progress(total, total)
        return {k: (r if not isinstance(r, Exception) else (0.0, "", f"model error: {r}"))
                for k, r in zip(keys, results)}

    def _logit_batch(self, prompt: str, images: list[Image.Image]) -> list[tuple[float, str, None]]:
        logits = self.engine.yes_no_logits(prompt, images)  # [n, 2]: (yes, no)
        p_yes = (logits[:, 0] - logits[:, 1]).sigmoid().tolist()
        return [(10.0 * p, f"p(yes)={p:.4f} p(no)={1 - p:.4f}", None) for p in p_yes]

    def _generate_batch(self, prompt: str, images: list[Image.Image],
                        lenient: bool) -> list[tuple[float, str, str | None]]:
        out = []
        for text in self.engine.generate(prompt, images):
            value = parse_score(text, lenient=lenient)
            if value is None:
                out.append((0.0, text, "could not read a 0-10 score in the model's answer"))
            else:
                out.append((value, text, None))
        return out

    def rerank(self, query: str, images: Sequence[ImageSource], *, score_threshold: float | None = UNSET,
               top_k: int | None = UNSET, preset: str | None = None, instruction: str | None = None,
               normalize: bool = False, tie_epsilon: float = 0.05, raise_on_error: bool = UNSET,
               labels: Sequence[str] | None = None, max_side: int | None = None,
               progress: Progress | None = None) -> list[RerankResult]:
        """Score, then rank: best first, ``min(top_k, passing)`` results (see ``lychee.ranking``).

        A ``preset`` supplies ``score_threshold``, ``top_k`` and ``raise_on_error``
        defaults; arguments given explicitly win.
        """
        chosen = get_preset(preset) if preset is not None else None
        score_threshold = preset_value(score_threshold, chosen, "score_threshold", None)
        top_k = preset_value(top_k, chosen, "top_k", None)
        raise_on_error = preset_value(raise_on_error, chosen, "raise_on_error", False)
        ranking.validate_selection(score_threshold, top_k)
        records = self.score(query, images, instruction=instruction, labels=labels, max_side=max_side,
                             lenient_parsing=chosen.lenient_parsing if chosen else False, progress=progress)
        failures = [r.error for r in records if r.error]
        if raise_on_error and failures:
            raise RerankError(f"{len(failures)} of {len(records)} images failed: " + "; ".join(failures))
        return ranking.rank(records, score_threshold=score_threshold, top_k=top_k,
                            normalize=normalize, tie_epsilon=tie_epsilon)
