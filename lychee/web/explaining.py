"""The web's side of "Why this score?": an explain request checked once, its occlusion map made on
the process's one model within the request time limit, and how the map reads on the page.

No gradio here: :mod:`lychee.web.app`, :mod:`lychee.web.api` and :mod:`lychee.web.gpu` call into it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..explain import DEFAULT_CELLS, Explanation, legend_label, parse_grid
from ..images import ImageSource
from ..limits import Limits
from ..messages import UserError
from ..ranking import RerankResult
from ..request import Query, prepare_query
from ..reranker import Progress
from ..settings import DEFAULT_MAX_SIDE, check_max_side
from .i18n import Language, text
from .model_slot import ModelSlot
from .service import RerankOutcome

STRONGEST_REGIONS = 3  # lines under the map


@dataclass(frozen=True)
class ExplainJob:
    """An accepted explain request: the prepared query and the image to explain."""

    query: Query
    image: ImageSource
    label: str | None = None
    grid: int | tuple[int, int] | None = None
    max_side: int = DEFAULT_MAX_SIDE


def accept_explain(query: str | None, image: ImageSource | None, limits: Limits, *, instruction: str | None = None,
                   query_image: ImageSource | None = None, query_image_label: str | None = None, grid: Any = None,
                   max_side: Any = DEFAULT_MAX_SIDE, label: str | None = None) -> ExplainJob:
    """What can be checked before the model is: ``max_side``, the grid's form, the query and its
    image; ``UserError`` names the first problem (the grid's bounds depend on the scored image)."""
    max_side = check_max_side(max_side)
    parsed_grid = parse_grid(grid)
    prepared = prepare_query(query, instruction=instruction or None, image=query_image,
                             image_label=query_image_label, max_side=max_side, limits=limits)
    if image is None:
        raise UserError("no_image")
    return ExplainJob(prepared, image, label, parsed_grid, max_side)


def passes_reserved(job: ExplainJob) -> int:
    """Forward passes to reserve GPU time for: the grid's cells and the image. The default grid
    depends on the image's size, known only once it is decoded on the GPU side: its most cells."""
    if job.grid is None:
        cells = DEFAULT_CELLS[2]
    else:
        rows, cols = (job.grid, job.grid) if isinstance(job.grid, int) else job.grid
        cells = rows * cols
    return cells + 1


def make_map(job: ExplainJob, slot: ModelSlot, *, progress: Progress | None = None,
             stop: Callable[[], bool] | None = None, seconds: float | None = None) -> Explanation:
    """The job's map on the slot's model (the GPU work); past ``seconds`` (default
    ``limits.request_timeout_s``) ``UserError('timeout')``, once ``stop()`` is true ``UserError('cancelled')``."""
    return slot.get().explain_query(job.query, job.image, grid=job.grid, label=job.label, max_side=job.max_side,
                                    progress=slot.deadline(progress, stop=stop, seconds=seconds))


def explain(job: ExplainJob, slot: ModelSlot, *,
            make: Callable[[ExplainJob], Explanation] | None = None) -> Explanation:
    """The job's map made by ``make`` (default :func:`make_map`; the app's is GPU-wrapped) in one of
    the slot's scoring turns, which ranking requests share (``LYCHEE_CONCURRENCY``)."""
    slot.get()  # waits for the model outside any GPU allocation
    with slot.scoring:
        return (make or (lambda accepted: make_map(accepted, slot)))(job)


def chosen_result(outcome: RerankOutcome | None, choice: int | None) -> RerankResult | None:
    """The ranked image to explain: the one at ``choice`` in the ranked gallery, else #1; None without results."""
    results = outcome.report.results if outcome is not None else []
    if not results:
        return None
    return results[choice] if choice is not None and 0 <= choice < len(results) else results[0]


def page_job(outcome: RerankOutcome, result: RerankResult) -> ExplainJob:
    """The map of a ranked image, asked for on the page: the run's own query (already prepared) and pixel settings."""
    request = outcome.request
    return ExplainJob(request.query, outcome.job.images[result.index], label=result.source,
                      max_side=request.settings.max_side)


def button_label(result: RerankResult | None, lang: Language) -> str:
    """"Why this score? · #2 rocket.jpg" ("#1" until another image is chosen)."""
    target = f"#{result.rank} {result.source}" if result is not None else "#1"
    return text("explain_button", lang, target=target)


def region_lines(explanation: Explanation, lang: Language) -> list[str]:
    """One line per strongest region (largest ``|delta|``, either sign), strongest first, in ``lang``."""
    return [explanation.describe(cell, lang) for cell in explanation.strongest(STRONGEST_REGIONS)]


def summary_markdown(explanation: Explanation, lang: Language) -> str:
    """The map's headline (image, score, grid, cost), one line per strongest region, and what the colours mean."""
    rows, cols = explanation.grid
    head = text("explain_summary", lang, source=explanation.source, score=f"{explanation.score:.2f}", rows=rows,
                cols=cols, passes=explanation.forward_passes, seconds=f"{explanation.elapsed_s:.1f}")
    lines = region_lines(explanation, lang) or [text("explain_flat", lang)]
    return "\n".join([f"**{head}**", "", *(f"- {line}" for line in lines), "", f"*{legend_label(lang)}*"])


def slider_images(explanation: Explanation) -> tuple[Image.Image, Image.Image]:
    """(the image as scored, its heat map), the same size, for a before/after slider."""
    heat = explanation.overlay(legend=False)
    return explanation.image.resize(heat.size, Image.Resampling.NEAREST), heat
