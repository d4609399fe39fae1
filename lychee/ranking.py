"""Ranking post-processing: pure functions over scored records (no torch, no gradio).

Rules, applied in this order by :func:`rank`:

1. **Errors** score 0.0 and always sink below every image that was scored.
2. **Normalisation** (opt-in): batch-local min-max over the scored images, mapped back
   to 0-10. When every score is equal there is nothing to stretch and each score is
   left as it is (never NaN).
3. **score_threshold** keeps ``score >= score_threshold`` (the normalised score when
   normalising); it never changes a score. Failed images never pass a threshold.
4. **Sorting** of what passed by score, descending; equal scores keep input order.
5. **Ties**: scores closer than ``tie_epsilon`` are too close to call. After sorting, a
   tie group starts at its highest score and takes every following score within
   epsilon *of that first score*; the next score starts a new group. A chain 9.27,
   9.24, 9.21 is two groups, {9.27, 9.24} and {9.21}: no two members of a group are
   epsilon or more apart, so reordering inside a group never puts an image epsilon or
   more above one ranked before it. Inside a group, input order decides, and every
   member of a group of two or more is marked ``tied``.
6. **top_k** truncates the ordered list: the result length is ``min(top_k, passing)``.

:func:`split` also returns everything left out (below the threshold or beyond top_k),
ordered by the same rules, so a caller can show what was filtered and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .messages import Language, Message
from .settings import Settings

WinnerStrength = Literal["close", "clear", "dominant"]
ScoredBy = Literal["model", "store"]  # where a score came from: a model call, or the score store

CLOSE_GAP = 0.1
DOMINANT_RATIO = 1.5
WEAK_MATCH_SCORE = 5.0


@dataclass(frozen=True)
class ScoredImage:
    """One candidate as scored by the model, before any ranking."""

    index: int
    source: str
    raw_score: float
    raw_output: str
    error: str | None = None  # why it failed, in English: the API's and the CLI's words
    failure: Message | None = field(default=None, compare=False)  # the same, said in either language
    scored_by: ScoredBy | None = field(default=None, compare=False)  # None: it failed before reaching the model

    @classmethod
    def failed(cls, index: int, source: str, failure: Message, raw_output: str = "",
               scored_by: ScoredBy | None = None) -> ScoredImage:
        """A record of an image that could not be scored, and why."""
        return cls(index, source, 0.0, raw_output, str(failure), failure, scored_by)


@dataclass(frozen=True)
class RerankResult:
    """One ranked candidate. ``score`` is the final 0-10 score (normalised if asked)."""

    rank: int
    index: int
    source: str
    score: float
    raw_score: float
    tied: bool
    raw_output: str
    error: str | None
    failure: Message | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable record (``error`` in English)."""
        record = asdict(self)
        del record["failure"]
        return record

    def error_text(self, lang: Language) -> str | None:
        """Why it failed, in ``lang`` (None when it did not)."""
        return self.failure.text(lang) if self.failure is not None else self.error


def normalized_scores(raw_scores: Sequence[float]) -> list[float]:
    """Min-max map ``raw_scores`` onto 0-10; an all-equal batch is returned unchanged."""
    if not raw_scores:
        return []
    low, high = min(raw_scores), max(raw_scores)
    if high - low <= 0.0:
        return list(raw_scores)
    return [10.0 * ((s - low) / (high - low)) for s in raw_scores]


def tie_groups(sorted_scores: Sequence[float], tie_epsilon: float) -> list[range]:
    """Split descending ``sorted_scores`` into tie groups, each anchored at its first
    (highest) score and holding the following scores less than epsilon below it."""
    groups: list[range] = []
    start = 0
    for i in range(1, len(sorted_scores) + 1):
        if i == len(sorted_scores) or sorted_scores[start] - sorted_scores[i] >= tie_epsilon:
            groups.append(range(start, i))
            start = i
    return groups


def _ordered(items: Sequence[tuple[float, ScoredImage]], tie_epsilon: float,
             first_rank: int) -> list[RerankResult]:
    """Rules 1, 4 and 5 over (final score, record) pairs."""
    scored = sorted((p for p in items if p[1].error is None), key=lambda p: (-p[0], p[1].index))
    ranked: list[tuple[float, ScoredImage, bool]] = []
    for group in tie_groups([score for score, _ in scored], tie_epsilon):
        members = sorted((scored[i] for i in group), key=lambda p: p[1].index)
        ranked += [(score, record, len(group) > 1) for score, record in members]
    ranked += [(0.0, r, False) for _, r in sorted((p for p in items if p[1].error), key=lambda p: p[1].index)]
    return [
        RerankResult(rank=first_rank + i, index=r.index, source=r.source, score=score,
                     raw_score=r.raw_score if r.error is None else 0.0, tied=tied,
                     raw_output=r.raw_output, error=r.error, failure=r.failure)
        for i, (score, r, tied) in enumerate(ranked)
    ]


def split(records: Sequence[ScoredImage], **settings: Any) -> tuple[list[RerankResult], list[RerankResult]]:
    """``(results, left_out)``: the ranked results (rules 1-6, ranks 1..n) and every
    other image, ordered by the same rules, ranks continuing after the results. ``settings``:
    keywords of :class:`~lychee.settings.Settings` (``score_threshold``, ``top_k``, ...)."""
    return split_with(records, Settings(**settings))


def split_with(records: Sequence[ScoredImage], settings: Settings) -> tuple[list[RerankResult], list[RerankResult]]:
    """:func:`split` by settings that are already validated (a :class:`~lychee.settings.Settings`)."""
    threshold, top_k = settings.score_threshold, settings.top_k
    scored = [r for r in records if r.error is None]
    raw = [r.raw_score for r in scored]
    finals = normalized_scores(raw) if settings.normalize else raw
    final_of = {r.index: f for r, f in zip(scored, finals)}
    items = [(final_of.get(r.index, 0.0), r) for r in records]
    passing = [p for p in items if threshold is None or (p[1].error is None and p[0] >= threshold)]
    ordered = _ordered(passing, settings.tie_epsilon, first_rank=1)
    results = ordered if top_k is None else ordered[:top_k]
    kept = {r.index for r in results}
    left_out = _ordered([p for p in items if p[1].index not in kept], settings.tie_epsilon,
                        first_rank=len(results) + 1)
    return results, left_out


def rank(records: Sequence[ScoredImage], **settings: Any) -> list[RerankResult]:
    """The ranked results only (see :func:`split`)."""
    return split(records, **settings)[0]


@dataclass(frozen=True)
class Partition:
    """Every image in exactly one group; ranks run on from ``results`` to ``filtered_out``."""

    results: list[RerankResult]       # scored images that passed, best first
    filtered_out: list[RerankResult]  # scored images below the threshold or beyond top_k
    errors: list[RerankResult]        # images that failed, in input order


def partition(records: Sequence[ScoredImage], **settings: Any) -> Partition:
    """:func:`split`, with the failed images (which ``split`` keeps among the results when
    there is no threshold) taken out into their own group."""
    return partition_with(records, Settings(**settings))


def partition_with(records: Sequence[ScoredImage], settings: Settings) -> Partition:
    """:func:`partition` by validated settings."""
    results, left_out = split_with(records, settings)
    return Partition(results=[r for r in results if r.error is None],
                     filtered_out=[r for r in left_out if r.error is None],
                     errors=[r for r in results + left_out if r.error is not None])


def winner_strength(ranked: Sequence[RerankResult]) -> WinnerStrength | None:
    """How decisive #1 (``ranked[0]``) is over the best of the rest: ``close`` (gap < 0.1
    or tied), ``clear``, or ``dominant`` (#1 >= 1.5 x #2). ``None`` when there is no
    scored #1 or nothing to compare it with. Pass results and left-out images together."""
    if not ranked or ranked[0].error is not None:
        return None
    first, rest = ranked[0], [r for r in ranked[1:] if r.error is None]
    if not rest:
        return None
    second = max(rest, key=lambda r: r.score)
    if first.tied or first.score - second.score < CLOSE_GAP:
        return "close"
    return "dominant" if first.score >= DOMINANT_RATIO * second.score else "clear"


def matches_well(best: RerankResult) -> bool:
    """Whether #1 is a real match: the model's own score (``raw_score``, before any batch
    normalisation) is at least ``WEAK_MATCH_SCORE``. Below it, how far #1 leads means little."""
    return best.error is None and best.raw_score >= WEAK_MATCH_SCORE
