"""Threshold calibration on the user's own labels: pure functions (no torch, no gradio).

The presets' thresholds rest on claims about the model ("8.5 or more means over 96 %
precision"); :func:`calibrate` checks such a claim on images someone has labelled as
relevant or not. For every distinct score ``t`` it counts what ``score >= t`` keeps:

- **precision** = relevant kept / kept, with a 95 % Wilson interval (it stays inside 0-1
  and is honest about small counts, unlike the normal approximation);
- **recall** = relevant kept / relevant labelled; **F1** their harmonic mean.

The **recommended threshold** is the lowest ``t`` whose precision reaches the target:
recall only falls as ``t`` rises, so it keeps the most relevant images at that precision.
Labels from several queries may be pooled; a threshold is one number for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import Any

from .messages import Notice, UserError

SCHEMA_VERSION = 1
DEFAULT_TARGET_PRECISION = 0.9
MIN_LABELS_PER_CLASS = 10   # below this many of either class, no figure is worth trusting
SEPARABLE_RECALL = 0.5      # "separable": the target precision is reached keeping at least half the relevant
CONFIDENCE = 0.95
TABLE_THRESHOLDS = tuple(t / 2 for t in range(10, 20))  # 5.0, 5.5, ... 9.5: the report's table
_Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)


def wilson_interval(successes: int, trials: int, z: float = _Z) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``successes / trials`` (``(0, 1)`` without trials)."""
    if trials == 0:
        return 0.0, 1.0
    p, z2 = successes / trials, z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    # It always holds p itself: at 0 or all successes rounding would otherwise leave p a hair outside.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


@dataclass(frozen=True)
class ThresholdPoint:
    """What ``score >= threshold`` keeps of the labelled images."""

    threshold: float
    kept: int                      # labelled images at or above the threshold
    relevant_kept: int
    precision: float | None        # None when nothing is kept
    precision_interval: tuple[float, float]
    recall: float | None           # None when no image is labelled relevant
    f1: float | None

    @classmethod
    def count(cls, threshold: float, kept: int, relevant_kept: int, relevant: int) -> ThresholdPoint:
        precision = relevant_kept / kept if kept else None
        recall = relevant_kept / relevant if relevant else None
        f1 = None
        if precision is not None and recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return cls(threshold, kept, relevant_kept, precision, wilson_interval(relevant_kept, kept), recall, f1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "precision_interval": list(self.precision_interval)}


@dataclass(frozen=True)
class Calibration:
    """The result of :func:`calibrate`; :meth:`to_dict` is its JSON form."""

    target_precision: float
    points: tuple[ThresholdPoint, ...]    # one per distinct score, lowest threshold first
    recommended: ThresholdPoint | None    # the lowest threshold reaching the target precision
    best_f1: ThresholdPoint | None
    average_precision: float | None       # None without relevant labels
    labels: int
    relevant: int
    queries: int

    @property
    def irrelevant(self) -> int:
        return self.labels - self.relevant

    @property
    def threshold(self) -> float | None:
        """The recommended ``score_threshold``, or None when no threshold reaches the target."""
        return self.recommended.threshold if self.recommended else None

    @property
    def separable(self) -> bool:
        """Whether both classes were labelled and the target precision is reached keeping at
        least half of the relevant images."""
        point = self.recommended
        return bool(self.relevant and self.irrelevant and point and point.recall >= SEPARABLE_RECALL)

    @property
    def warnings(self) -> tuple[Notice, ...]:
        """Why the figures may not be worth much: too few labels, one class only, no clean separation."""
        notices = []
        if not self.relevant or not self.irrelevant:
            key = "calibration_only_relevant" if self.relevant else "calibration_only_irrelevant"
            notices.append(Notice(key, {"labels": self.labels}))
        elif min(self.relevant, self.irrelevant) < MIN_LABELS_PER_CLASS:
            notices.append(Notice("calibration_too_few", {"relevant": self.relevant, "irrelevant": self.irrelevant,
                                                          "minimum": MIN_LABELS_PER_CLASS}))
        if self.relevant and self.irrelevant and not self.separable:
            target = f"{self.target_precision:.0%}"
            if self.recommended is None:
                notices.append(Notice("calibration_unreachable", {"target": target}))
            else:
                notices.append(Notice("calibration_no_separation", {
                    "target": target, "threshold": f"{self.recommended.threshold:.2f}",
                    "recall": f"{self.recommended.recall:.0%}"}))
        return tuple(notices)

    def at(self, threshold: float) -> ThresholdPoint:
        """The point of any threshold: it keeps what the lowest labelled score at or above it keeps."""
        above = next((p for p in self.points if p.threshold >= threshold), None)
        if above is None:
            return ThresholdPoint.count(threshold, 0, 0, self.relevant)
        return replace(above, threshold=threshold)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (schema version 1)::

            {"schema_version": 1, "target_precision": float,
             "threshold": float | null, "recommended": point | null, "separable": bool,
             "best_f1": point | null, "average_precision": float | null,
             "counts": {"labels": int, "relevant": int, "irrelevant": int, "queries": int},
             "warnings": [{"code": str, "message": str}, ...], "points": [point, ...]}

        ``point`` is ``{"threshold", "kept", "relevant_kept", "precision", "precision_interval":
        [low, high], "recall", "f1"}``; precision is null when nothing is kept, recall and f1
        when nothing is labelled relevant. ``points`` has one per distinct score, lowest first.
        """
        return {
            "schema_version": SCHEMA_VERSION,
            "target_precision": self.target_precision,
            "threshold": self.threshold,
            "recommended": self.recommended.to_dict() if self.recommended else None,
            "separable": self.separable,
            "best_f1": self.best_f1.to_dict() if self.best_f1 else None,
            "average_precision": self.average_precision,
            "counts": {"labels": self.labels, "relevant": self.relevant, "irrelevant": self.irrelevant,
                       "queries": self.queries},
            "warnings": [n.to_dict() for n in self.warnings],
            "points": [p.to_dict() for p in self.points],
        }


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _row(point: ThresholdPoint, note: str = "") -> str:
    low, high = point.precision_interval
    f1 = "—" if point.f1 is None else f"{point.f1:.2f}"
    return (f"| {point.threshold:.2f}{note} | {point.kept} | {point.relevant_kept} | {_percent(point.precision)} "
            f"| {_percent(low)}–{_percent(high)} | {_percent(point.recall)} | {f1} |")


def to_markdown(result: Calibration, *, title: str = "Threshold calibration") -> str:
    """A readable report: the recommendation, its warnings, and a table of the thresholds
    5.0 to 9.5 in steps of 0.5 with the recommended one in its place."""
    point = result.recommended
    lines = [f"# {title}", "",
             f"{result.labels} labels from {result.queries} {'query' if result.queries == 1 else 'queries'}: "
             f"{result.relevant} relevant, {result.irrelevant} irrelevant · target precision "
             f"{_percent(result.target_precision)}", ""]
    if point is None:
        lines.append("**No recommended threshold.**")
    else:
        low, high = point.precision_interval
        lines.append(f"**Recommended threshold: {point.threshold:.2f}**: precision {_percent(point.precision)} "
                     f"(95% interval {_percent(low)}–{_percent(high)}), recall {_percent(point.recall)} "
                     f"({point.relevant_kept} of {result.relevant} relevant images kept).")
    figures = []
    if result.best_f1 is not None:
        figures.append(f"Best F1 {result.best_f1.f1:.2f} at {result.best_f1.threshold:.2f}")
    if result.average_precision is not None:
        figures.append(f"average precision {result.average_precision:.2f}")
    if figures:
        lines += ["", " · ".join(figures)]
    lines += [""] + [f"- ⚠ {notice.text('en')}" for notice in result.warnings]
    lines += ["", "| score ≥ | kept | relevant kept | precision | 95% interval | recall | F1 |",
              "|---:|---:|---:|---:|:---:|---:|---:|"]
    thresholds = sorted({*TABLE_THRESHOLDS, *([point.threshold] if point else [])})
    lines += [_row(result.at(t), " (recommended)" if point and t == point.threshold else "") for t in thresholds]
    return "\n".join(lines) + "\n"


def check_target_precision(value: Any) -> float:
    """A target precision: a number above 0 and at most 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise UserError("bad_target_precision", value=repr(value)[:40])
    return float(value)


def _check_label_values(labels: Sequence[Any], *, unlabelled_ok: bool = False) -> None:
    for i, label in enumerate(labels):
        if label is None and unlabelled_ok:
            continue
        if label not in (True, False) or not isinstance(label, bool | int):  # 1 and 0 count as True and False
            raise UserError("calibration_bad_label", position=i + 1, value=repr(label)[:40])


def _check_labels(scores: Sequence[Any], labels: Sequence[Any]) -> tuple[list[float], list[bool]]:
    if len(scores) != len(labels):
        raise UserError("calibration_lengths", scores=len(scores), labels=len(labels))
    if not scores:
        raise UserError("calibration_no_labels")
    for i, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise UserError("calibration_bad_score", position=i + 1, value=repr(score)[:40])
    _check_label_values(labels)
    return [float(s) for s in scores], [bool(label) for label in labels]


def _check_queries(queries: Any, labels: int) -> None:
    if not isinstance(queries, Sequence) or isinstance(queries, str):
        raise UserError("calibration_bad_query", position=1, value=repr(queries)[:40])
    if len(queries) != labels:
        raise UserError("calibration_queries_length", queries=len(queries), labels=labels)
    for i, query in enumerate(queries):
        if not isinstance(query, str):
            raise UserError("calibration_bad_query", position=i + 1, value=repr(query)[:40])


def check_service_input(scores: Any, labels: Any, *, max_labels: int) -> None:
    """What a served calibration refuses before any work: more than ``max_labels`` scores or labels,
    and scores outside lychee's 0-10 (the library's :func:`calibrate` takes any finite scale)."""
    for given in (scores, labels):
        if isinstance(given, Sequence) and len(given) > max_labels:
            raise UserError("calibration_too_many", limit=f"{max_labels:,}", count=f"{len(given):,}")
    for i, score in enumerate(scores if isinstance(scores, Sequence) else ()):
        if isinstance(score, int | float) and not isinstance(score, bool) and not 0 <= score <= 10:
            raise UserError("calibration_score_range", position=i + 1, value=repr(score)[:40])


def calibrate(scores: Sequence[float], labels: Sequence[bool], *,
              target_precision: float = DEFAULT_TARGET_PRECISION,
              queries: Sequence[str] | None = None) -> Calibration:
    """Precision, recall and F1 of ``score >= t`` for every distinct score ``t`` of the labelled
    images, and the lowest ``t`` that reaches ``target_precision``.

    Args:
        scores: One score per labelled image (0-10 in lychee, but any finite scale works).
        labels: ``True`` (relevant) or ``False`` per score; 1 and 0 are accepted.
        target_precision: The precision the recommended threshold must reach (above 0, at most 1).
        queries: The query of each label, when several queries are pooled (only counted).

    Returns:
        A :class:`Calibration`; bad input raises :class:`~lychee.messages.UserError`.

    Example:
        >>> calibrate([9.1, 8.7, 6.2, 3.0], [True, True, False, False]).threshold
        8.7
    """
    target_precision = check_target_precision(target_precision)
    scores, labels = _check_labels(scores, labels)
    if queries is not None:
        _check_queries(queries, len(labels))
    relevant = sum(labels)
    ranked = sorted(zip(scores, labels), reverse=True)
    descending: list[ThresholdPoint] = []   # one per distinct score, highest first
    kept = relevant_kept = 0
    for i, (score, label) in enumerate(ranked):
        kept, relevant_kept = kept + 1, relevant_kept + label
        if i + 1 == len(ranked) or ranked[i + 1][0] != score:
            descending.append(ThresholdPoint.count(score, kept, relevant_kept, relevant))
    points = tuple(reversed(descending))
    reaching = [p for p in points if p.precision >= target_precision]
    best_f1 = max((p for p in points if p.f1), key=lambda p: p.f1, default=None)  # ties: the lowest threshold
    average_precision = None
    if relevant:  # the step-wise area under the precision-recall curve, as scikit-learn computes it
        recalls = [0.0] + [p.recall for p in descending]
        average_precision = sum((r - prev) * p.precision for prev, r, p in zip(recalls, recalls[1:], descending))
    return Calibration(target_precision=target_precision, points=points,
                       recommended=reaching[0] if reaching else None, best_f1=best_f1,
                       average_precision=average_precision, labels=len(labels), relevant=relevant,
                       queries=len(set(queries)) if queries is not None else 1)


REPORT_SCHEMA_VERSION = 4  # the /rerank and ``rank --format json`` report this reads


def report_scores(report: Mapping[str, Any], labels: Sequence[bool | None]) -> tuple[list[float], list[bool]]:
    """The labelled scores of one rerank report (its JSON form, schema version 4).

    ``labels`` has one entry per input image, in input order (the records' ``index``):
    True, False, or None for an image not labelled. Images that failed are left out."""
    try:
        if report.get("schema_version") != REPORT_SCHEMA_VERSION:
            raise ValueError(f"schema_version {report.get('schema_version')!r}")
        records = [r for group in ("results", "filtered_out") for r in report[group]]
        images = report["counts"]["images"]
        score_of = {int(r["index"]): r["score"] for r in records}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UserError("calibration_bad_report", reason=str(exc)[:80]) from None
    if not isinstance(labels, Sequence) or isinstance(labels, str) or len(labels) != images:
        raise UserError("calibration_bad_report", reason=f"{images} images but labels is {repr(labels)[:40]}")
    _check_label_values(labels, unlabelled_ok=True)
    chosen = [i for i, label in enumerate(labels) if label is not None and i in score_of]
    return [score_of[i] for i in chosen], [bool(labels[i]) for i in chosen]
