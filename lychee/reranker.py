"""``LycheeReranker``: the public entry point - images and a query in, ranked records out."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from . import protocol, ranking
from .backends import Backend, load_backend
from .backends.base import Progress, StageProgress
from .documents import DocumentTexts, prepare_texts, text_label
from .explain import Explanation, occlusion
from .images import ImageLoadError, ImageSource, PixelBudget, load_image, source_label
from .limits import Limits
from .messages import InputWarning, Message, Notice, UserError, printable
from .parsing import parse_score
from .ranking import RerankResult, ScoredBy, ScoredImage
from .request import Query, Request, build_request, prepare_query
from .score_keys import model_identity, pair_keys
from .settings import DEFAULT_MAX_SIDE, UNSET, Unset, check_max_side, resolve_settings
from .store import ScoreStore, open_store, through_store

log = logging.getLogger(__name__)

Mode = Literal["logit", "generate"]

LOAD_THREADS = 8  # image decoding threads at most
Judged = tuple[float, str, Message | None, ScoredBy]  # score, raw output, error, where the score came from


class RerankError(RuntimeError):
    """Raised by ``rerank(..., raise_on_error=True)`` when any image failed."""


def default_model() -> str:
    """``$LYCHEE_MODEL`` if set, else the hub id of lychee-rerank-mm."""
    return os.environ.get(protocol.MODEL_ENV_VAR) or protocol.DEFAULT_MODEL


def display_name(model: str) -> str:
    """How a model is shown to users: a hub id as it is, a local checkpoint by its folder
    name only (server paths stay private)."""
    if model.startswith(("/", ".", "~")) or Path(model).expanduser().is_dir():
        return Path(model).expanduser().name or model
    return model


def warn(notices: Sequence[Notice]) -> None:
    """Log each notice and raise it as an :class:`~lychee.messages.InputWarning` for Python callers."""
    for notice in notices:
        log.warning("%s", notice.text("en"))
        warnings.warn(notice.text("en"), InputWarning, stacklevel=3)


class LycheeReranker:
    """Score and rank images against a Chinese/English/mixed text query.

    ``model`` is a hub id or a local directory (default ``$LYCHEE_MODEL`` or
    ``vec-ai/lychee-rerank-mm``). ``mode="logit"`` is the lychee-rerank-mm protocol
    (p(yes) of a yes/no judgement); ``mode="generate"`` asks a generic instruction-tuned
    VLM for a 0-10 score as text and parses it (transformers backend only).

    ``backend`` picks the engine: ``"transformers"`` (this process), ``"vllm"`` (an
    in-process ``vllm.LLM``; ``engine_options`` go to it, e.g. ``{"tensor_parallel_size": 2}``)
    or ``"vllm-server"`` (a client of the vLLM server at ``server_url``, default
    ``$LYCHEE_VLLM_URL`` or ``http://127.0.0.1:8000``; ``model`` None means the model it serves);
    or a :class:`~lychee.backends.base.Backend` already built (the benchmarks' random 7B),
    when the loading arguments are unused. Scores, errors and ranking are the same on all.

    ``min_pixels``/``max_pixels`` bound each image's pixels after resizing (N visual tokens
    = N x 28 x 28 pixels); the defaults are the model card's, at most 1280 visual tokens.
    ``max_side``: images are first scaled so their longest side is at most this (64-4096).
    Images are resized once, as they are decoded, to the size the pixel budget gives them.
    ``batch_size``: pairs per forward pass at most (transformers; pairs are packed by tokens,
    see :mod:`lychee.backends.packing`; None: at most 32). ``vision_cache_bytes``: bound of
    the transformers backend's cache of image features that lets a new query over the same
    images skip the vision tower (None: ``$LYCHEE_VISION_CACHE_MB`` or 1 GiB; 0: off).
    ``store``: a score store (a file path, or a :class:`~lychee.store.ScoreStore`) that keeps
    every score made, for :meth:`score` and :meth:`rerank` on every backend: a pair scored once
    (same model revision, dtype, pixel budget, query, instruction and document) is never scored
    again, across runs and processes (logit mode; see :mod:`lychee.score_keys`).
    """

    def __init__(self, model: str | None = None, device: str = "auto", dtype: str = "auto", *,
                 backend: str | Backend = "transformers", server_url: str | None = None,
                 mode: Mode = "logit", batch_size: int | None = None, min_pixels: int = protocol.MIN_PIXELS,
                 max_pixels: int = protocol.MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE,
                 limits: Limits | None = None, vision_cache_bytes: int | None = None,
                 engine_options: Mapping[str, object] | None = None,
                 store: str | os.PathLike | ScoreStore | None = None) -> None:
        if mode not in ("logit", "generate"):
            raise ValueError(f"mode must be 'logit' or 'generate', got {mode!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if not 1 <= min_pixels <= max_pixels:
            raise ValueError(f"need 1 <= min_pixels <= max_pixels, got {min_pixels} and {max_pixels}")
        if mode == "generate" and not (backend == "transformers" or hasattr(backend, "generate")):
            name = getattr(backend, "name", backend)
            raise ValueError(f"mode='generate' needs the transformers backend, not {name!r}")
        self.mode: Mode = mode
        self.max_side = check_max_side(max_side)
        self.limits = limits or Limits.from_env()
        if isinstance(backend, str):
            backend = load_backend(backend, model=model if model or backend == "vllm-server" else default_model(),
                                   device=device, dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels,
                                   need_yes_no=mode == "logit", batch_size=batch_size,
                                   vision_cache_bytes=vision_cache_bytes, server_url=server_url,
                                   engine_options=engine_options)
        self.backend: Backend = backend
        self.store = open_store(store)
        self._identity: str | None | Unset = UNSET  # the model's, for the store's keys: found on first use

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    @property
    def _budget(self) -> PixelBudget:
        """The backend's pixel budget: images are resized to it once, as they are decoded."""
        return self.backend.min_pixels, self.backend.max_pixels

    def describe(self) -> dict[str, str]:
        """What scores: backend, model (a local checkpoint by its folder name), device, dtype,
        attention, mode and the pixel budget (``visual_tokens``: per image, min-max)."""
        about = self.backend.describe()
        return {**about, "model": display_name(about["model"]), "mode": self.mode}

    def score(self, query: str | None, images: Sequence[ImageSource | None] | None = None, *,
              texts: Sequence[str | None] | None = None, query_image: ImageSource | None = None,
              instruction: str | None = None, labels: Sequence[str] | None = None, max_side: int | None = None,
              lenient_parsing: bool = False, progress: Progress | None = None,
              start: int = 0) -> list[ScoredImage]:
        """Score every document (an image, a text or both), in input order; nothing is filtered.
        Failures carry ``error``.

        ``texts`` (see :meth:`rerank`) gives the documents their texts, cleaned like the query.

        The query is ``query`` text, a ``query_image`` (path, PIL image or bytes, read by
        the same safe loader as the candidates), or both. A query image that cannot be used
        refuses the request (:class:`~lychee.messages.UserError` ``bad_query_image``); it is
        encoded once for all the candidates.

        ``start`` is the position of ``images[0]`` in a longer list that a caller scores in
        chunks: records and messages then carry the position in that list. More than
        ``LYCHEE_MAX_IMAGES`` images raise :class:`~lychee.limits.LimitExceeded`.
        """
        max_side = check_max_side(max_side) if max_side is not None else self.max_side
        if query_image is not None and self.mode != "logit":
            raise ValueError("image queries need mode='logit' (the lychee protocol)")
        prepared = prepare_query(query, instruction=instruction, image=query_image, max_side=max_side,
                                 limits=self.limits)
        documents = None if texts is None else prepare_texts(texts, self.limits)
        warn(prepared.notices + (documents.notices if documents else ()))
        return self._score(prepared, images, documents, max_side=max_side, lenient_parsing=lenient_parsing,
                           labels=labels, progress=progress, start=start)

    def score_request(self, request: Request, images: Sequence[ImageSource | None] | None = None, *,
                      texts: DocumentTexts | None = None, labels: Sequence[str] | None = None,
                      progress: Progress | None = None, start: int = 0,
                      stages: StageProgress | None = None) -> list[ScoredImage]:
        """:meth:`score` for a request a surface has already validated (:func:`lychee.request.build_request`):
        its query is used as it is, its settings give ``max_side`` and the preset's parsing rule;
        ``texts`` are the documents' texts as :func:`lychee.documents.prepare_texts` cleaned them.

        ``stages``, if given, is called as ``stages(stage, done, total)`` through each stage:
        ``decoding`` (image by image), then ``scoring`` (batch by batch).
        """
        if request.query.image is not None and self.mode != "logit":
            raise ValueError("image queries need mode='logit' (the lychee protocol)")
        settings = request.settings
        if stages is not None:
            progress = _also_staged(progress, stages)
        return self._score(request.query, images, texts, max_side=settings.max_side,
                           lenient_parsing=settings.lenient_parsing, labels=labels, progress=progress, start=start,
                           decoded=(lambda done, total: stages("decoding", done, total)) if stages else None)

    def _score(self, query: Query, images: Sequence[ImageSource | None] | None, documents: DocumentTexts | None, *,
               max_side: int, lenient_parsing: bool, labels: Sequence[str] | None, progress: Progress | None,
               start: int, decoded: Progress | None = None) -> list[ScoredImage]:
        images, texts = _candidates(images, documents)
        if self.mode != "logit" and (any(texts) or None in images):
            raise ValueError("documents with text need mode='logit' (the lychee protocol)")
        self.limits.check_image_count(len(images))
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"got {len(labels)} labels for {len(images)} images")
        names = list(labels) if labels is not None else [
            source_label(s, start + i) if s is not None else text_label(t) if t else f"document {start + i + 1}"
            for i, (s, t) in enumerate(zip(images, texts))]

        def failed(i: int, cause: Message, raw_output: str = "", scored_by: ScoredBy | None = None) -> ScoredImage:
            log.warning("%s", printable(f"{'image' if images[i] is not None else 'document'}s[{start + i}] "
                                        f"'{names[i]}': {cause}"))
            return ScoredImage.failed(start + i, names[i], cause, raw_output, scored_by)

        loaded: dict[int, Image.Image | None] = {}
        errors: dict[int, ScoredImage] = {}
        with_image = [i for i, source in enumerate(images) if source is not None]
        for i, outcome in zip(with_image, self._load_all([images[i] for i in with_image], max_side, decoded)):
            if isinstance(outcome, ImageLoadError):
                errors[i] = failed(i, outcome.message)
            else:
                loaded[i] = outcome
        for i, source in enumerate(images):
            if source is None:
                if texts[i]:
                    loaded[i] = None  # a text-only document: nothing for the vision tower
                else:
                    errors[i] = failed(i, Message("document_empty"))
        loaded = dict(sorted(loaded.items()))
        outputs = self._score_loaded(query.text, query.instruction, query.image, loaded, lenient_parsing, progress,
                                     total=len(images), already_done=len(errors), texts=texts)
        records = []
        for i in range(len(images)):
            if i in errors:
                records.append(errors[i])
                continue
            value, raw_output, cause, scored_by = outputs[i]
            records.append(failed(i, cause, raw_output, scored_by) if cause
                           else ScoredImage(start + i, names[i], value, raw_output, scored_by=scored_by))
        return records

    def scored_image(self, source: ImageSource, max_side: int | None = None) -> Image.Image:
        """``source`` as the model scores it: decoded by the safe loader, its longest side at most
        ``max_side`` (default ``self.max_side``), resized once to the backend's pixel budget.
        Raises :class:`~lychee.images.ImageLoadError`."""
        return load_image(source, max_side=self.max_side if max_side is None else max_side, limits=self.limits,
                          budget=self._budget)

    def _load_all(self, images: Sequence[ImageSource], max_side: int,
                  progress: Progress | None = None) -> list[Image.Image | ImageLoadError]:
        """Decode ``images`` on a few threads (Pillow's decoders release the GIL), reporting each one done."""
        def load(source: ImageSource) -> Image.Image | ImageLoadError:
            try:
                return self.scored_image(source, max_side)
            except ImageLoadError as exc:
                return exc

        if progress:
            progress(0, len(images))
        with ThreadPoolExecutor(max_workers=min(LOAD_THREADS, os.cpu_count() or 1)) as pool:
            futures = [pool.submit(load, source) for source in images]
            for done, _ in enumerate(as_completed(futures), start=1):
                if progress:
                    progress(done, len(images))
            return [future.result() for future in futures]

    def _score_loaded(self, query: str, instruction: str | None, reference: Image.Image | None,
                      loaded: dict[int, Image.Image | None],
                      lenient: bool, progress: Progress | None, *, total: int,
                      already_done: int, texts: Sequence[str]) -> dict[int, Judged]:
        """Each loaded document's (score, raw output, error, where the score came from), by position."""
        keys, images = list(loaded), list(loaded.values())
        if self.mode == "logit":
            messages = protocol.rerank_messages(query, instruction, query_image=reference is not None)
            documents = [texts[i] for i in keys]

            def fresh(positions: list[int]) -> list[float | Exception]:
                subset = [documents[j] for j in positions]
                stored = len(keys) - len(positions)

                def report(done: int, _: int) -> None:
                    if progress:
                        progress(already_done + stored + done, total)

                # Backends see texts only when a document has one: an image-only call is what it always was.
                with_texts = {"texts": subset} if any(subset) else {}
                return self.backend.relevance(messages, [images[j] for j in positions], report,
                                              query_image=reference, **with_texts)

            store_keys = self._store_keys(messages, reference, images, documents)
            if store_keys is None:
                outputs, from_store = fresh(list(range(len(keys)))), [False] * len(keys)
            else:
                outputs, from_store = through_store(self.store, store_keys, fresh)
            judged = [(*_relevance(p), "store" if stored else "model") for p, stored in zip(outputs, from_store)]
        else:
            def report(done: int, _: int) -> None:
                if progress:
                    progress(already_done + done, total)

            outputs = self.backend.generate(protocol.generate_messages(query, instruction), images, report)
            judged = [(*_parsed(text, lenient), "model") for text in outputs]
        if progress and (not keys or all(by == "store" for *_, by in judged)):
            progress(total, total)
        return dict(zip(keys, judged))

    def _store_keys(self, messages: list[dict], reference: Image.Image | None, images: Sequence[Image.Image | None],
                    texts: Sequence[str]) -> list[str] | None:
        """Each document's key in the score store, or None: no store, or a model whose identity
        (revision, weights) cannot be known, so that no score is ever taken for another model's."""
        if self.store is None:
            return None
        if self._identity is UNSET:
            self._identity = model_identity(self.backend.name, self.model_id)
            if self._identity is None:
                log.warning("scores are not stored: the revision or weights of %s (%s backend) cannot be known here",
                            display_name(self.model_id), self.backend.name)
        if self._identity is None:
            return None
        return pair_keys(self._identity, backend=self.backend.name, dtype=self.backend.describe()["dtype"],
                         budget=self._budget, messages=messages, query_image=reference, images=images, texts=texts)

    def explain(self, query: str | None, image: ImageSource, *, query_image: ImageSource | None = None,
                instruction: str | None = None, grid: int | tuple[int, int] | None = None, label: str | None = None,
                query_image_label: str | None = None, max_side: int | None = None,
                progress: Progress | None = None) -> Explanation:
        """Why this score? An occlusion map of ``image`` against the query (see :mod:`lychee.explain`).

        The image, as scored (:meth:`scored_image`), is cut into a grid of cells along its 28-px
        patches; a copy with each cell blurred over is scored, all copies in one batched call
        of this reranker's backend with the same query, ``query_image`` and ``instruction``.

        Args:
            query, query_image, instruction: As for :meth:`rerank`; cleaned and checked the same way.
            image: The image to explain (path, PIL image or bytes).
            grid: None for 16-36 cells as square as the patches allow; N for N x N; or (rows, cols).
            label, query_image_label: The names of the image and the query image in the result
                (default: their file names).
            max_side, progress: As for :meth:`rerank`; progress counts the image and its copies.

        Returns:
            An :class:`~lychee.explain.Explanation`: ``score`` (what :meth:`score` gives the image),
            ``grid``, ``cells`` with their ``masked_score`` and ``delta``, ``forward_passes``,
            ``to_dict()`` and ``overlay()``. Bad input raises :class:`~lychee.messages.UserError`
            (``empty_query``, ``bad_image``, ``bad_query_image``, ``bad_grid``); a copy the backend
            fails on raises ``explain_failed``.
        """
        max_side = check_max_side(max_side) if max_side is not None else self.max_side
        prepared = prepare_query(query, instruction=instruction, image=query_image, image_label=query_image_label,
                                 max_side=max_side, limits=self.limits)
        warn(prepared.notices)
        return self.explain_query(prepared, image, grid=grid, label=label, max_side=max_side, progress=progress)

    def explain_query(self, query: Query, image: ImageSource, *, grid: int | tuple[int, int] | None = None,
                      label: str | None = None, max_side: int | None = None,
                      progress: Progress | None = None) -> Explanation:
        """:meth:`explain` for a query a surface has already prepared (:func:`lychee.request.prepare_query`)."""
        if self.mode != "logit":
            raise ValueError("explanations need mode='logit' (the lychee protocol)")
        try:
            scored = self.scored_image(image, max_side)
        except ImageLoadError as exc:
            raise UserError("bad_image", reason=exc.message) from None
        reference = query.image  # the backend fits it to the pixel budget, as it does for every query
        messages = protocol.rerank_messages(query.text, query.instruction, query_image=reference is not None)

        def score_images(images: list[Image.Image], report: Progress | None) -> list[float | Exception]:
            outputs = self.backend.relevance(messages, images, report, query_image=reference)
            judged = [_relevance(p) for p in outputs]
            return [UserError(cause.key, **cause.params) if cause else score for score, _, cause in judged]

        return occlusion(scored, score_images, grid=grid, progress=progress, query=query.text,
                         source=label or source_label(image, 0), instruction=query.instruction, model=self.describe(),
                         query_image=query.image_label)

    def rerank(self, query: str | None, images: Sequence[ImageSource | None] | None = None, *,
               texts: Sequence[str | None] | None = None, query_image: ImageSource | None = None,
               preset: str | None = None, instruction: str | None = None, raise_on_error: bool | Unset = UNSET,
               labels: Sequence[str] | None = None, progress: Progress | None = None,
               **settings: Any) -> list[RerankResult]:
        """Score every document against the query, then rank: best first, ``min(top_k, passing)`` results.

        A document is an image, a text, or an image with a text (a product photo and its title):
        ``images`` and ``texts`` give them position by position.

        Args:
            query: What the image should show, in Chinese, English or both. Chat control
                tokens are removed and a query over ``LYCHEE_MAX_QUERY_CHARS`` is cut (each
                with an :class:`~lychee.messages.InputWarning`). Without ``query_image`` an
                empty query raises ``ValueError``; with one it may be empty or None.
            images: File paths, PIL images or raw bytes, in any mix; None for a document that is
                a text alone. An image that cannot be used gets score 0.0 and an ``error`` and
                sinks to the bottom.
            texts: A text for each document (None or "" for none), the same length as ``images``,
                or, without ``images``, the documents themselves. In the prompt each comes after
                its image; it is cleaned like the query (control tokens removed, cut at
                ``LYCHEE_MAX_DOCUMENT_CHARS``, each with an ``InputWarning``). A text-only document
                costs no vision-tower time; one with neither image nor text gets an ``error``.
            query_image: A reference image (path, PIL image or bytes) for "images like this
                one" (with ``query`` text: "like this one, but ..."). One that cannot be read
                refuses the request (``UserError`` ``bad_query_image``).
            preset: "screening", "precise", "mixed_language" or "pipeline": defaults for
                ``score_threshold``, ``top_k`` and ``raise_on_error``; explicit arguments win.
            instruction: Task instruction for the model (None: the default for the query's kind,
                ``protocol.DEFAULT_INSTRUCTIONS``); cleaned like the query, capped at
                ``LYCHEE_MAX_INSTRUCTION_CHARS``.
            raise_on_error: Raise :class:`RerankError` when any image failed (default: the
                preset's, else False).
            labels: A name per image for ``source`` (default: the file name or ``image N``).
            progress: Called as ``progress(done, total)`` while scoring.
            settings: The ranking settings of :data:`lychee.settings.SETTINGS` (``docs/settings.md``):
                ``score_threshold`` (keep scores >= this, 0-10; None keeps all; default the preset's,
                else None), ``top_k`` (keep at most this many, >= 1; None keeps all; default the
                preset's), ``normalize`` (min-max normalise this batch onto 0-10 before the threshold),
                ``tie_epsilon`` (scores less than this below the best of their tie group are tied; ties
                keep input order) and ``max_side`` (longest side in pixels before scoring, 64-4096;
                default ``self.max_side``). An unknown name raises ``TypeError``.

        Returns:
            :class:`~lychee.ranking.RerankResult` records, ranks 1..n; see ``lychee.ranking``
            for the rules. Invalid settings raise ``ValueError`` (a
            :class:`~lychee.messages.UserError`) before any image is scored.

        Example::

            >>> reranker.rerank("a black cat on a red sofa", ["a.jpg", "b.jpg"], top_k=1)
            [RerankResult(rank=1, index=1, source='b.jpg', score=8.7, ...)]
            >>> reranker.rerank("", ["a.jpg", "b.jpg"], query_image="reference.jpg")  # images like this one
            >>> reranker.rerank("red running shoes", ["a.jpg", None], texts=["Trail shoe, red", "Red sneaker"])
        """
        if settings.get("max_side") is None:
            settings["max_side"] = self.max_side
        checked = resolve_settings(preset, **settings)
        if raise_on_error is UNSET:
            raise_on_error = checked.preset.raise_on_error if checked.preset else False
        request = build_request(query, checked, self.limits, instruction=instruction, image=query_image)
        documents = None if texts is None else prepare_texts(texts, self.limits)
        warn(request.notices + (documents.notices if documents else ()))
        records = self.score_request(request, images, texts=documents, labels=labels, progress=progress)
        failures = [f"images[{r.index}] '{r.source}': {r.error}" for r in records if r.error]
        if raise_on_error and failures:
            raise RerankError(f"{len(failures)} of {len(records)} images failed: " + "; ".join(failures))
        return ranking.split_with(records, checked)[0]


def _also_staged(progress: Progress | None, stages: StageProgress) -> Progress:
    """``progress`` that also reports to ``stages`` as the ``scoring`` stage."""
    def report(done: int, total: int) -> None:
        stages("scoring", done, total)
        if progress:
            progress(done, total)
    return report


def _candidates(images: Sequence[ImageSource | None] | None,
                documents: DocumentTexts | None) -> tuple[list[ImageSource | None], list[str]]:
    """Each document's image (None: none) and text ("" : none), position by position."""
    if images is None and documents is None:
        raise ValueError("give images, texts or both")
    if images is not None and documents is not None and len(images) != len(documents):
        raise ValueError(f"got {len(documents)} texts for {len(images)} images")
    count = len(images) if images is not None else len(documents)
    return (list(images) if images is not None else [None] * count,
            list(documents.texts) if documents is not None else [""] * count)


def _relevance(p_yes: float | Exception) -> tuple[float, str, Message | None]:
    """(score, raw output, error) of one image in logit mode; a p(yes) that is not a finite number
    (an fp16 overflow) is an error, never a NaN that would break the order and the JSON."""
    if isinstance(p_yes, Exception):
        return 0.0, "", Message("model_error", {"detail": str(p_yes)})
    if not math.isfinite(p_yes):
        return 0.0, f"p(yes)={p_yes}", Message("score_not_finite")
    return 10.0 * p_yes, f"p(yes)={p_yes:.4f} p(no)={1 - p_yes:.4f}", None


def _parsed(text: str | Exception, lenient: bool) -> tuple[float, str, Message | None]:
    """(score, raw output, error) of one image in generate mode: the score read from the answer."""
    if isinstance(text, Exception):
        return 0.0, "", Message("model_error", {"detail": str(text)})
    value = parse_score(text, lenient=lenient)
    if value is None:
        return 0.0, text, Message("score_unreadable")
    return value, text, None
