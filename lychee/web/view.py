"""How a :class:`~lychee.web.service.RerankOutcome` looks in the web demo: captions, the
results table (one table of columns: header, width, cells, line breaking), the #1 card, the
status line and query hints. Pure (no gradio), so every piece is testable without a browser."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ..images import ImageLoadError, ImageSource, load_image
from ..limits import Limits
from ..query_hints import CATEGORIES, query_hints
from ..ranking import WEAK_MATCH_SCORE, RerankResult, matches_well
from .i18n import Language, count_text, text
from .service import RerankOutcome

THUMBNAIL_SIDE = 320
NAME_LIMIT = 19  # characters of a file name in a gallery caption; longer ones lose their middle
WORD_SEPARATOR = {"zh": "、", "en": ", "}


def short_name(name: str, limit: int = NAME_LIMIT) -> str:
    """``name``, or its start and end around ``…`` (the extension survives) when longer than ``limit``."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return f"{name[:head]}…{name[head + 1 - limit:]}"


def score_text(result: RerankResult) -> str:
    """``9.31``, or ``≈9.31`` when the image is tied with a neighbour."""
    return f"{'≈' if result.tied else ''}{result.score:.2f}"


def caption(result: RerankResult) -> str:
    """Gallery caption: ``#1 · 9.31`` over the (shortened) name; ``≈`` before a tied score.

    Rank and score come first, on their own line, so a narrow thumbnail never hides them."""
    return f"#{result.rank} · {score_text(result)}\n{short_name(result.source)}"


def reason_text(result: RerankResult, outcome: RerankOutcome, lang: Language) -> str:
    """Why an image was filtered out, in words."""
    settings = outcome.request.settings
    if outcome.report.left_out_reason(result) == "below_threshold":
        return text("reason_below_threshold", lang, threshold=f"{settings.score_threshold:g}")
    return text("reason_beyond_top_k", lang, top_k=settings.top_k)


def ranked_gallery(outcome: RerankOutcome) -> list[tuple[str, str]]:
    """``(path, caption)`` for each ranked image, best first."""
    return [(outcome.job.images[r.index], caption(r)) for r in outcome.report.results]


def filtered_gallery(outcome: RerankOutcome, lang: Language) -> list[tuple[str, str]]:
    """``(path, caption + reason)`` for each image that was scored but left out."""
    return [(outcome.job.images[r.index], f"{caption(r)}\n{reason_text(r, outcome, lang)}")
            for r in outcome.report.filtered_out]


@dataclass(frozen=True)
class Column:
    """One column of the results table."""

    header: str                              # UI text key of its header
    width: str                               # of the table's width
    cell: Callable[[RerankResult, Language], str]
    breaks_anywhere: bool = False            # names and messages may break anywhere; numbers only between words


def _status_cell(result: RerankResult, lang: Language) -> str:
    if result.error:
        return text("status_error", lang, error=result.error)
    return text("status_tied" if result.tied else "status_ok", lang)


TABLE_COLUMNS = (
    Column("col_rank", "15%", lambda r, _: str(r.rank)),
    Column("col_image", "26%", lambda r, _: r.source, breaks_anywhere=True),
    Column("col_score", "15%", lambda r, _: "0.00" if r.error else score_text(r)),
    Column("col_raw_score", "19%", lambda r, _: "" if r.error else f"{r.raw_score:.4f}"),
    Column("col_status", "25%", _status_cell, breaks_anywhere=True),
)


def table_headers(lang: Language) -> list[str]:
    return [text(column.header, lang) for column in TABLE_COLUMNS]


def table_widths() -> list[str]:
    return [column.width for column in TABLE_COLUMNS]


def table_css(table_id: str = "lychee-table") -> str:
    """The per-column line-breaking rules of the results table."""
    return "".join(f"#{table_id} td:nth-child({i}) span {{ overflow-wrap: anywhere; }}\n"
                   for i, column in enumerate(TABLE_COLUMNS, start=1) if column.breaks_anywhere)


def _empty_slot(rank: int, lang: Language) -> list[str]:
    return [str(rank), "", "", "", text("status_empty_slot", lang)]


def table_rows(outcome: RerankOutcome, lang: Language) -> list[list[str]]:
    """The results, then (for a fixed-length preset) empty slots up to ``top_k``, then the failures."""
    report = outcome.report
    rows = [[column.cell(r, lang) for column in TABLE_COLUMNS] for r in report.results]
    rows += [_empty_slot(rank, lang) for rank in range(len(rows) + 1, (report.slots or 0) + 1)]
    return rows + [[column.cell(r, lang) for column in TABLE_COLUMNS] for r in report.errors]


def raw_output_headers(lang: Language) -> list[str]:
    return [text(k, lang) for k in ("col_rank", "col_image", "col_raw_output")]


def raw_output_rows(outcome: RerankOutcome) -> list[list[str]]:
    """What the model said about every image, in rank order."""
    report = outcome.report
    everything = report.results + report.filtered_out + report.errors
    return [[str(r.rank), r.source, r.raw_output or r.error or ""] for r in everything]


def status_line(outcome: RerankOutcome, lang: Language) -> str:
    """Counts, elapsed time, throughput, device, dtype and the pixel budget (visual tokens per image)."""
    report, model = outcome.report, outcome.report.model
    return text("status_done", lang, images=count_text("n_images", len(outcome.job.images), lang),
                ranked=len(report.results), filtered=len(report.filtered_out), errors=len(report.errors),
                elapsed=f"{report.elapsed_s:.2f}", rate=f"{report.images_per_s:.1f}",
                device=model.get("device", "?"), dtype=model.get("dtype", "?"),
                tokens=model.get("visual_tokens", "?"))


def _thumbnail_uri(source: ImageSource) -> str:
    try:
        image = load_image(source, max_side=THUMBNAIL_SIDE)
    except ImageLoadError:
        return ""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def winner_level(outcome: RerankOutcome) -> str:
    """How the #1 card and thumbnail look: ``weak`` when #1 does not match well (whatever its
    lead), else the winner strength (``close``, ``clear``, ``dominant``), or ``alone``."""
    if not matches_well(outcome.report.results[0]):
        return "weak"
    return outcome.report.winner_strength or "alone"


def lead_text(outcome: RerankOutcome, lang: Language) -> str:
    """How far #1 leads the best other scored image. Never negative: inside a tie group input
    order decides, so a tied #1 may score a little lower than #2, and the card says "tied"."""
    report = outcome.report
    first, others = report.results[0], report.results[1:] + report.filtered_out
    if not others:
        return ""
    if first.tied:
        return text("winner_tied", lang)
    return text("winner_gap", lang, gap=f"{first.score - max(r.score for r in others):.2f}")


def winner_card(outcome: RerankOutcome, lang: Language) -> str:
    """HTML card of #1: its badge and border say how much to trust it (see :func:`winner_level`)."""
    if not outcome.report.results:
        threshold = outcome.request.settings.score_threshold
        message = text("no_results", lang, threshold=f"{threshold:g}" if threshold is not None else "-")
        return f'<div class="lychee-winner lychee-winner--empty">{html.escape(message)}</div>'
    first, level = outcome.report.results[0], winner_level(outcome)
    note = text("winner_weak_note", lang, bar=f"{WEAK_MATCH_SCORE:g}") if level == "weak" else ""
    thumbnail = _thumbnail_uri(outcome.job.images[first.index])
    image = f'<img class="lychee-winner__image" src="{thumbnail}" alt="">' if thumbnail else ""
    return (
        f'<div class="lychee-winner lychee-winner--{level}">{reference_figure(outcome, lang)}{image}'
        f'<div class="lychee-winner__body">'
        f'<span class="lychee-winner__badge">{html.escape(text(f"winner_{level}", lang))}</span>'
        f'<div class="lychee-winner__name">#1 · {html.escape(first.source)}</div>'
        f'<div class="lychee-winner__score">{score_text(first)}<small> / 10</small></div>'
        f'<div class="lychee-winner__gap">{html.escape(lead_text(outcome, lang))}</div>'
        f'<div class="lychee-winner__note">{html.escape(note)}</div>'
        f"</div></div>"
    )


def reference_figure(outcome: RerankOutcome, lang: Language) -> str:
    """The query image, captioned, for beside the #1 card ("" for a text query)."""
    reference = outcome.request.query.image
    thumbnail = _thumbnail_uri(reference) if reference is not None else ""
    if not thumbnail:
        return ""
    return (f'<figure class="lychee-winner__reference"><img src="{thumbnail}" alt="">'
            f'<figcaption>{html.escape(text("reference_caption", lang))}</figcaption></figure>')


def download_stem(query: str, when: datetime) -> str:
    """``rerank-<query>-<yyyymmdd-hhmmss>``: a download's file name says what was asked, and when."""
    words = re.sub(r"\W+", "-", query).strip("-")[:40].rstrip("-")
    return f"rerank-{words or 'query'}-{when:%Y%m%d-%H%M%S}"


def hints_markdown(query: str, lang: Language, max_chars: int = Limits.max_query_chars) -> str:
    """Advice for vague words in ``query`` (empty when there are none); never blocks the query.

    Only the first ``max_chars`` characters count (the query limit: the model never sees more),
    so a huge text costs no more than a long query."""
    hints = query_hints(query[:max_chars] if isinstance(query, str) else "")
    if not hints:
        return ""
    lines = []
    for category in CATEGORIES:
        words = [h.word for h in hints if h.category == category]
        if words:
            lines.append(text(f"hints_{category}", lang, words=WORD_SEPARATOR[lang].join(words)))
    return "\n\n".join([*lines, text("hints_cues", lang)])
