"""The web demo's logic without gradio: a form in, plain records out.

:mod:`lychee.web.app` and :mod:`lychee.web.api` (the modules that import gradio) and the tests
call into this module. It holds the web's request conventions (:class:`Form` -> :func:`accept` ->
:class:`Job`) and :func:`rerank`, whose :class:`RerankOutcome` keeps every image's score so a new
threshold, top_k, tie epsilon or normalisation is applied without the model (:meth:`RerankOutcome.reranked`).
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .. import memory
from ..documents import DocumentTexts, prepare_texts
from ..images import ImageSource
from ..limits import Limits
from ..messages import Notice, UserError
from ..ranking import ScoredImage
from ..report import Report
from ..request import Request, build_request
from ..settings import BY_NAME, RANKING_FIELDS, SETTINGS, Settings, resolve_settings, surface_value
from .model_slot import ModelSlot

log = logging.getLogger(__name__)


def remove_older_than(folder: Path, seconds: float, *, now: float | None = None) -> int:
    """Delete the entries of ``folder`` (files, or folders with what they hold) last modified more
    than ``seconds`` ago; returns how many went. Entries that vanish meanwhile are skipped."""
    cutoff = (time.time() if now is None else now) - seconds
    removed = 0
    for entry in list(folder.iterdir()) if folder.is_dir() else []:
        try:
            if entry.lstat().st_mtime >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except FileNotFoundError:
            continue
    return removed



@dataclass(frozen=True, init=False)
class Form:
    """What the page or an API client asked for, unchecked, in the web's conventions
    (:func:`lychee.settings.surface_value`): the query, the reference image, and the settings of
    :data:`~lychee.settings.SETTINGS` by name, as sent (a setting not sent is not given).
    Built by name only: ``Form("a cat", top_k=3, query_image=path)``."""

    query: str | None
    values: Mapping[str, Any]
    query_image: ImageSource | None = None  # a reference image: with or without ``query`` text
    query_image_label: str | None = None    # its name (default: from the file name)

    def __init__(self, query: str | None = None, *, query_image: ImageSource | None = None,
                 query_image_label: str | None = None, **values: Any) -> None:
        unknown = set(values) - set(BY_NAME)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        for name, value in (("query", query), ("values", MappingProxyType(dict(values))),
                            ("query_image", query_image), ("query_image_label", query_image_label)):
            object.__setattr__(self, name, value)

    def get(self, name: str) -> Any:
        """The value sent for setting ``name``, else its default."""
        return self.values.get(name, BY_NAME[name].default)


def form_settings(form: Form) -> Settings:
    """The form's settings, checked by the library's one validator after the web's conventions
    are translated, the preset's defaults filled in."""
    given = {name: surface_value(BY_NAME[name], form.values[name]) for name in RANKING_FIELDS if name in form.values}
    return resolve_settings(form.values.get("preset"), **given)


@dataclass(frozen=True)
class Job:
    """An accepted request and its candidates: images (paths, bytes, a refused download's error,
    or None for a text alone) and, for documents that carry text, their cleaned texts."""

    request: Request
    images: tuple[ImageSource | None, ...]
    labels: tuple[str, ...] | None = None  # a ``source`` name per image (default: from the file name)
    texts: DocumentTexts | None = None

    @property
    def notices(self) -> tuple[Notice, ...]:
        """What cleaning changed in the query and the documents' texts."""
        return self.request.notices + (self.texts.notices if self.texts else ())


def accept(form: Form, images: Sequence[Any], limits: Limits, *, labels: Sequence[str] | None = None,
           texts: Sequence[str | None] | None = None) -> Job:
    """The form as a :class:`Job`: the settings, the query (cleaned, its reference image decoded),
    the documents' ``texts`` (cleaned; one per image, None or "" for none) and the number of
    documents checked once; ``UserError`` names the first problem."""
    settings = form_settings(form)
    request = build_request(form.query, settings, limits, instruction=form.get("instruction") or None,
                            image=form.query_image, image_label=form.query_image_label)
    if not images:
        raise UserError("no_images")
    limits.check_image_count(len(images))
    if texts is not None and len(texts) != len(images):
        raise UserError("texts_length", texts=len(texts), images=len(images))
    documents = prepare_texts(texts, limits) if texts is not None and any(texts) else None
    return Job(request, tuple(images), tuple(labels) if labels is not None else None, documents)


def captions_from_names(names: Sequence[str]) -> str:
    """One caption a line from file names: ``red-trail_shoe.jpg`` -> ``red trail shoe``."""
    return "\n".join(re.sub(r"[-_.\s]+", " ", Path(name).stem).strip() for name in names)


def caption_lines(captions: str | None, count: int) -> list[str] | None:
    """The page's captions box as one text per image (a missing or blank line: none); None when empty."""
    lines = (captions or "").splitlines()
    if not any(line.strip() for line in lines):
        return None
    return [line.strip() for line in lines[:count]] + [""] * max(0, count - len(lines))


@dataclass(frozen=True)
class RerankOutcome:
    """A job, every image's score and the :class:`~lychee.report.Report` ranked from them (the JSON
    and CSV downloads, the API answer)."""

    job: Job
    records: tuple[ScoredImage, ...]  # in input order: the ranking can be applied again without the model
    report: Report

    @property
    def request(self) -> Request:
        return self.job.request

    def reranked(self, settings: Settings) -> RerankOutcome:
        """The same scores ranked by other ``settings``: no model call. ``max_side`` stays the
        one the images were scored at."""
        settings = replace(settings, max_side=self.request.settings.max_side)
        job = replace(self.job, request=replace(self.request, settings=settings))
        report = Report.build(job.request, self.records, model=self.report.model, elapsed_s=self.report.elapsed_s,
                              notices=job.texts.notices if job.texts else ())
        return RerankOutcome(job, self.records, report)


def scored_with(form: Form, images: Sequence[Any], texts: Sequence[str] | None = None) -> tuple[Any, ...]:
    """What the scores of a run depend on (the query, its reference image, the images and their texts,
    and every setting that changes scores, e.g. the instruction and max side): when any of it changes,
    the results shown are stale. The settings that only rank (threshold, top_k, ...) are not in it."""
    def plain(value: Any) -> Any:
        return (value or "").strip() if isinstance(value, str) or value is None else value
    return (plain(form.query), form.query_image, tuple(images), tuple(texts or ()),
            *(plain(form.get(s.name)) for s in SETTINGS if s.effect == "scores"))


@dataclass(frozen=True)
class Shown:
    """The outcome on a page and the inputs its scores came from (:func:`scored_with`)."""

    outcome: RerankOutcome
    inputs: tuple[Any, ...]


def rerank(job: Job, slot: ModelSlot, *, score: Callable[[Job], list[ScoredImage]] | None = None) -> RerankOutcome:
    """Score the job's images with ``score`` (default ``slot.score``) and rank them.

    The JSON form (``outcome.report.to_dict()``) is :meth:`lychee.report.Report.to_dict`
    (schema version 4), shared with the CLI's ``--format json``. A bad image only becomes an
    error record.
    """
    model = slot.get().describe()  # waits for the model outside any GPU allocation
    try:
        with slot.scoring:
            started = time.perf_counter()
            records = tuple((score or slot.score)(job))
    finally:
        memory.release_soon()  # the images decoded, fetched and scored leave the heap
    report = Report.build(job.request, records, model=model, elapsed_s=time.perf_counter() - started,
                          notices=job.texts.notices if job.texts else ())
    return RerankOutcome(job, records, report)
