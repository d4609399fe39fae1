"""The page's Calibrate panel without gradio: the labels a person gives the images of their
runs, what the calibration of those labels looks like, and the data of its two plots.

Labels are plain, immutable data kept for the page's session (a ``gr.State``); they add up
across runs and queries, one label per (query, image). Pure (no gradio), so every piece is
testable without a browser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..calibration import Calibration, calibrate
from ..ranking import RerankResult
from .i18n import Language, count_text, text
from .service import RerankOutcome
from .view import short_name

THRESHOLD_STEP = 0.01      # the threshold slider's step
DISTRIBUTION_BIN = 0.5     # width of the score histogram's bars


@dataclass(frozen=True)
class Label:
    """One labelled image of one run."""

    query: str         # what the run asked (its text, or the reference image's name)
    image: str         # the image's path: the same upload is the same image
    source: str        # the image's name, for people
    score: float       # the score the threshold filters on
    relevant: bool


Labels = tuple[Label, ...]


def query_of(outcome: RerankOutcome) -> str:
    """What a run asked, to tell runs apart: the query text and the reference image's name."""
    query = outcome.request.query
    return " + ".join(part for part in (query.image_label or "", query.text) if part)


def labelled_images(outcome: RerankOutcome) -> list[RerankResult]:
    """The run's scored images in rank order (results, then filtered out): what can be labelled."""
    return outcome.report.results + outcome.report.filtered_out


def _key(outcome: RerankOutcome, result: RerankResult) -> tuple[str, str]:
    return query_of(outcome), str(outcome.job.images[result.index])


def label_of(labels: Labels, outcome: RerankOutcome, result: RerankResult) -> bool | None:
    """The image's label in this run's query: True, False or None (not labelled)."""
    key = _key(outcome, result)
    return next((label.relevant for label in labels if (label.query, label.image) == key), None)


def cycle_label(labels: Labels, outcome: RerankOutcome, position: int) -> Labels:
    """``labels`` after a click on the ``position``-th labellable image: not labelled ->
    relevant -> not relevant -> not labelled. Its score is this run's."""
    result = labelled_images(outcome)[position]
    current = label_of(labels, outcome, result)
    key = _key(outcome, result)
    others = tuple(label for label in labels if (label.query, label.image) != key)
    if current is False:
        return others
    return others + (Label(*key, result.source, result.score, relevant=current is None),)


def rescored(labels: Labels, outcome: RerankOutcome) -> Labels:
    """``labels`` with this run's scores for the images it labelled (a run again, or normalised)."""
    score_of = {_key(outcome, r): r.score for r in labelled_images(outcome)}
    return tuple(replace(label, score=score_of.get((label.query, label.image), label.score)) for label in labels)


def label_gallery(labels: Labels, outcome: RerankOutcome | None, lang: Language) -> list[tuple[str, str]]:
    """``(path, caption)`` for each labellable image of the run: its label (or how to give one),
    its score and name."""
    if outcome is None:
        return []
    marks = {True: "label_relevant", False: "label_irrelevant", None: "label_none"}
    return [(str(outcome.job.images[r.index]),
             f"{text(marks[label_of(labels, outcome, r)], lang)} · {r.score:.2f}\n{short_name(r.source)}")
            for r in labelled_images(outcome)]


def calibration_of(labels: Labels, target_precision: float) -> Calibration | None:
    """The calibration of every label given so far (None before the first)."""
    if not labels:
        return None
    return calibrate([label.score for label in labels], [label.relevant for label in labels],
                     target_precision=target_precision, queries=[label.query for label in labels])


def _percent(value: float) -> str:
    return f"{value:.0%}"


def summary_markdown(result: Calibration | None, lang: Language) -> str:
    """What the labels say: how many (from how many queries), the recommended threshold with its
    precision, interval and recall, and every warning."""
    if result is None:
        return text("calibration_empty", lang)
    lines = [text("calibration_counts", lang, labels=count_text("count_labels", result.labels, lang),
                  queries=count_text("count_queries", result.queries, lang), relevant=result.relevant,
                  irrelevant=result.irrelevant)]
    point = result.recommended
    if point is None:
        lines.append(text("calibration_none", lang, target=_percent(result.target_precision)))
    else:
        low, high = point.precision_interval
        lines.append(text("calibration_recommended", lang, threshold=f"{point.threshold:.2f}",
                          precision=_percent(point.precision), low=_percent(low), high=_percent(high),
                          recall=_percent(point.recall), kept=point.relevant_kept, relevant=result.relevant))
    lines += [f"⚠ {notice.text(lang)}" for notice in result.warnings]
    return "\n\n".join(lines)


def applied_threshold(result: Calibration | None) -> float | None:
    """The recommended threshold as the slider can hold it: rounded down to the slider's step
    when that keeps the same labelled images, else exactly."""
    if result is None or result.recommended is None:
        return None
    exact = result.recommended.threshold
    rounded = math.floor(exact / THRESHOLD_STEP + 1e-9) * THRESHOLD_STEP
    lower = [p.threshold for p in result.points if p.threshold < exact]
    return round(rounded, 2) if not lower or rounded > max(lower) else exact


def curve_points(result: Calibration | None) -> list[dict[str, float]]:
    """The precision-recall curve, one point per distinct score, from the highest threshold down."""
    if result is None or not result.relevant:
        return []
    return [{"recall": p.recall, "precision": p.precision, "threshold": p.threshold} for p in reversed(result.points)]


def _bin(score: float) -> float:
    return math.floor(score / DISTRIBUTION_BIN) * DISTRIBUTION_BIN


def distribution_bins(labels: Labels) -> list[str]:
    """The histogram's bars, lowest first: every ``DISTRIBUTION_BIN``-wide bin from the lowest
    labelled score to the highest (empty ones too, so that gaps show)."""
    if not labels:
        return []
    low, high = _bin(min(label.score for label in labels)), _bin(max(label.score for label in labels))
    count = round((high - low) / DISTRIBUTION_BIN) + 1
    return [f"{low + i * DISTRIBUTION_BIN:.1f}" for i in range(count)]


def distribution_rows(labels: Labels, lang: Language) -> list[dict[str, Any]]:
    """The score histogram of each class: one row per label (its bin and class), plus an empty
    row for each bin that no label falls in."""
    names = {True: text("class_relevant", lang), False: text("class_irrelevant", lang)}
    rows = [{"score": f"{_bin(label.score):.1f}", "label": names[label.relevant], "images": 1} for label in labels]
    filled = {row["score"] for row in rows}
    return rows + [{"score": b, "label": names[True], "images": 0} for b in distribution_bins(labels)
                   if b not in filled]


def saved_threshold(value: Any) -> dict[str, float] | None:
    """The "my threshold" record kept in the browser, if it is one (the browser's storage is not trusted)."""
    if not isinstance(value, Mapping):
        return None
    threshold, precision = value.get("threshold"), value.get("precision")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 10:
        return None
    if isinstance(precision, bool) or not isinstance(precision, int | float) or not 0 <= precision <= 1:
        return None
    return {"threshold": float(threshold), "precision": float(precision)}


def to_save(result: Calibration | None) -> dict[str, float] | None:
    """The record to keep as "my threshold": the applied threshold and the precision it reached."""
    threshold = applied_threshold(result)
    if threshold is None:
        return None
    return {"threshold": threshold, "precision": result.recommended.precision}


def my_threshold_label(saved: Any, lang: Language) -> str:
    """The "my threshold" button's words ("" when nothing is kept)."""
    record = saved_threshold(saved)
    if record is None:
        return ""
    return text("my_threshold_button", lang, threshold=f"{record['threshold']:.2f}",
                precision=_percent(record["precision"]))

