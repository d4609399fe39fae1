"""How a :class:`~lychee.web.service.RerankOutcome` looks in the web demo: captions, the
results table (one table of columns: header, width, cells, line breaking), the #1 card, the
status line and query hints. Pure (no gradio), so every piece is testable without a browser."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from PIL import Image

from ..images import ImageLoadError, ImageSource, load_image
from ..limits import Limits
from ..messages import Notice, UserError
from ..presets import PRESETS
from ..query_hints import CATEGORIES, query_hints
from ..ranking import WEAK_MATCH_SCORE, RerankResult, matches_well
from .i18n import Language, count_text, text
from .service import RerankOutcome

THUMBNAIL_SIDE = 320  # the #1 card's image
ROW_THUMBNAIL_SIDE = 64  # a results table row's (shown at half that, sharp on a phone's screen)
STILL_SIDE = 512  # the still of an animated image in a gallery: at most 0.8 MB each, 128 kept (scored_frame)
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


@lru_cache(maxsize=128)
def scored_frame(path: str) -> Image.Image | None:
    """The frame of an animated image that was scored (its first), as a still; None for an image
    that does not move (or cannot be read), which a gallery shows as it is."""
    try:
        with Image.open(path) as image:
            if not getattr(image, "is_animated", False):
                return None
        return load_image(path, max_side=STILL_SIDE)
    except Exception:  # noqa: BLE001 - a file Pillow cannot open is shown as it is
        return None


def gallery_image(source: ImageSource) -> ImageSource | Image.Image:
    """What a gallery shows for a candidate: the file, or the still of the frame scored when it moves."""
    still = scored_frame(source) if isinstance(source, str) else None
    return source if still is None else still


def ranked_gallery(outcome: RerankOutcome) -> list[tuple[ImageSource | Image.Image, str]]:
    """``(image, caption)`` for each ranked image, best first."""
    return [(gallery_image(outcome.job.images[r.index]), caption(r)) for r in outcome.report.results]


def filtered_gallery(outcome: RerankOutcome, lang: Language) -> list[tuple[ImageSource | Image.Image, str]]:
    """``(image, caption + reason)`` for each image that was scored but left out."""
    return [(gallery_image(outcome.job.images[r.index]), f"{caption(r)}\n{reason_text(r, outcome, lang)}")
            for r in outcome.report.filtered_out]


@dataclass(frozen=True)
class Column:
    """One column of the results table."""

    header: str                              # UI text key of its header
    width: str                               # of the table's width
    cell: Callable[[RerankResult, RerankOutcome, Language], str]
    breaks_anywhere: bool = False            # names and messages may break anywhere; numbers only between words
    datatype: str = "str"                    # how the table draws a cell: text, or "html"


def _status_cell(result: RerankResult, _: RerankOutcome, lang: Language) -> str:
    if result.error:
        return text("status_error", lang, error=result.error_text(lang))
    return text("status_tied" if result.tied else "status_ok", lang)


_NAME_BREAKS = re.compile(r"(?<=[_\-/\\])")


def breakable_name(name: str) -> str:
    """``name`` as HTML that wraps after ``_ - /`` first ("photographer_" / "name.png", never
    "photographe" / "r.jpg"); only a part longer than its cell breaks inside."""
    return "<wbr>".join(html.escape(part) for part in _NAME_BREAKS.split(name))


def _score_cell(result: RerankResult, outcome: RerankOutcome) -> str:
    """The 0-10 score; when normalising, the model's own score under it, small."""
    if result.error:
        return "0.00"
    if not outcome.request.settings.normalize:
        return html.escape(score_text(result))
    return f"{html.escape(score_text(result))}<br><small>{result.raw_score:.2f}</small>"


def _row_thumbnail(source: ImageSource | None) -> str:
    uri = thumbnail_uri(source, ROW_THUMBNAIL_SIDE)
    return f'<img class="lychee-row-thumbnail" src="{uri}" alt="">' if uri else ""


TABLE_COLUMNS = (
    Column("col_rank", "12%", lambda r, *_: str(r.rank)),
    Column("col_thumbnail", "13%", lambda r, o, _: _row_thumbnail(o.job.images[r.index]), datatype="html"),
    Column("col_image", "29%", lambda r, *_: breakable_name(r.source), breaks_anywhere=True, datatype="html"),
    Column("col_score", "16%", lambda r, o, _: _score_cell(r, o), datatype="html"),
    Column("col_status", "30%", _status_cell, breaks_anywhere=True),
)


def table_headers(lang: Language) -> list[str]:
    return [text(column.header, lang) for column in TABLE_COLUMNS]


def table_widths() -> list[str]:
    return [column.width for column in TABLE_COLUMNS]


def table_datatypes() -> list[str]:
    return [column.datatype for column in TABLE_COLUMNS]


def table_css(table_id: str = "lychee-table") -> str:
    """The per-column line-breaking rules of the results table."""
    rules = []
    for i, column in enumerate(TABLE_COLUMNS, start=1):
        if column.breaks_anywhere:
            # Gradio 6 draws the rows as a virtual list of divs (and one sizing row of tds).
            cells = (f"#{table_id} td:nth-child({i})", f"#{table_id} .virtual-row > .body-cell:nth-child({i})")
            rules.append(", ".join(f"{cell} {part}" for cell in cells for part in (".cell-wrap", "span"))
                         + " { overflow-wrap: anywhere; }\n")
    return "".join(rules)


def _empty_slot(lang: Language) -> list[str]:
    # No rank: the ranks after the results belong to the images under "Filtered out" (see table_note).
    said = {"col_rank": "—", "col_status": text("status_empty_slot", lang)}
    return [said.get(column.header, "") for column in TABLE_COLUMNS]


def table_rows(outcome: RerankOutcome, lang: Language) -> list[list[str]]:
    """The results, then (for a fixed-length preset) empty slots up to ``top_k``, then the failures."""
    report = outcome.report
    rows = [[column.cell(r, outcome, lang) for column in TABLE_COLUMNS] for r in report.results]
    rows += [_empty_slot(lang) for _ in range(len(rows), report.slots or 0)]
    return rows + [[column.cell(r, outcome, lang) for column in TABLE_COLUMNS] for r in report.errors]


def raw_output_headers(lang: Language) -> list[str]:
    return [text(k, lang) for k in ("col_rank", "col_image", "col_raw_output")]


def raw_output_rows(outcome: RerankOutcome, lang: Language) -> list[list[str]]:
    """What the model said about every image (or why it failed), in rank order."""
    report = outcome.report
    everything = report.results + report.filtered_out + report.errors
    return [[str(r.rank), r.source, r.raw_output or r.error_text(lang) or ""] for r in everything]


def table_note(outcome: RerankOutcome, lang: Language) -> str:
    """Where the ranks the table skips are: between its last scored row and its failed rows lie
    the images under "Filtered out" ("" when the table's ranks have no gap)."""
    report = outcome.report
    if not (report.filtered_out and report.errors):
        return ""
    return text("table_note", lang, first=report.filtered_out[0].rank, last=report.filtered_out[-1].rank,
                filtered=text("filtered_label", lang, count=len(report.filtered_out)))


def status_line(outcome: RerankOutcome, lang: Language) -> str:
    """Counts, elapsed time, throughput, device, dtype and the pixel budget (visual tokens per image),
    and how many scores the score store kept from earlier requests, when it kept any."""
    report, model = outcome.report, outcome.report.model
    line = text("status_done", lang, images=count_text("n_images", len(outcome.job.images), lang),
                ranked=len(report.results), filtered=len(report.filtered_out), errors=len(report.errors),
                elapsed=f"{report.elapsed_s:.2f}", rate=f"{report.images_per_s:.1f}",
                device=model.get("device", "?"), dtype=model.get("dtype", "?"),
                tokens=model.get("visual_tokens", "?"))
    return line + (text("status_from_store", lang, count=report.from_store) if report.from_store else "")


def _encoded_thumbnail(source: ImageSource, side: int) -> str:
    try:
        image = load_image(source, max_side=side)
    except ImageLoadError:
        return ""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85 if side > ROW_THUMBNAIL_SIDE else 75)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_thumbnail_of_file = lru_cache(maxsize=1024)(_encoded_thumbnail)  # a re-rank draws the same files again


def thumbnail_uri(source: ImageSource | None, side: int = THUMBNAIL_SIDE) -> str:
    """A JPEG ``data:`` URI of ``source`` at most ``side`` px a side, as scored (the first frame of an
    animation); "" for no image or one that cannot be read. Files are encoded once."""
    if source is None:
        return ""
    return (_thumbnail_of_file if isinstance(source, str) else _encoded_thumbnail)(source, side)


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
    thumbnail = thumbnail_uri(outcome.job.images[first.index])
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
    thumbnail = thumbnail_uri(reference)
    if not thumbnail:
        return ""
    return (f'<figure class="lychee-winner__reference"><img src="{thumbnail}" alt="">'
            f'<figcaption>{html.escape(text("reference_caption", lang))}</figcaption></figure>')


def download_stem(query: str, when: datetime) -> str:
    """``rerank-<query>-<yyyymmdd-hhmmss>``: a download's file name says what was asked, and when."""
    words = re.sub(r"\W+", "-", query).strip("-")[:40].rstrip("-")
    return f"rerank-{words or 'query'}-{when:%Y%m%d-%H%M%S}"


def hints_markdown(query: str, lang: Language, max_chars: int = Limits.max_query_chars) -> str:
    """Advice for vague words in ``query``, each naming visual cues instead (empty when there are
    none); never blocks the query.

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
    return "\n\n".join(lines)


def status_html(message: str, *, note: str = "") -> str:
    """The status line above the results, with an optional second line (stale results, a re-rank)."""
    extra = f'<div class="lychee-status__note">{html.escape(note)}</div>' if note else ""
    return f'<div class="lychee-status">{html.escape(message)}{extra}</div>'


Alert = tuple[str, "UserError | Notice"]  # (kind: error, notice or cancelled; what to say)


def alerts_html(alerts: Sequence[Alert], lang: Language) -> str:
    """The last run's refusal or notices, titled and styled by kind, in ``lang`` ("" for none)."""
    blocks = []
    for kind in ("error", "cancelled", "notice"):
        said = [html.escape(message.text(lang)) for k, message in alerts if k == kind]
        if said:
            items = "".join(f"<li>{line}</li>" for line in said)
            role = "alert" if kind == "error" else "status"
            blocks.append(f'<div class="lychee-alert lychee-alert--{kind}" role="{role}">'
                          f'<strong>{html.escape(text(f"alert_{kind}_title", lang))}</strong><ul>{items}</ul></div>')
    return "".join(blocks)


def preset_description(name: str | None, score_threshold: float, top_k: float, lang: Language) -> str:
    """What the preset is for, and the threshold and top_k in force (and the preset's own, once moved)."""
    def shown(threshold: float, k: float) -> dict[str, str]:
        return {"threshold": f"{threshold:g}", "top_k": f"{int(k)}" if k else text("top_k_all", lang)}

    preset = PRESETS.get(name or "")
    lines = [preset.description[lang]] if preset else []
    in_force = text("preset_in_force", lang, **shown(score_threshold, top_k))
    if preset and (float(score_threshold), int(top_k)) != (preset.score_threshold, preset.top_k):
        in_force += " " + text("preset_changed", lang, **shown(preset.score_threshold, preset.top_k))
    basis = [f"<small>{preset.basis[lang]}</small>"] if preset else []
    return "  \n".join([*lines, f"`{in_force}`", *basis])
