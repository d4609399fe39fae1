"""How a :class:`~lychee.ui_service.RerankOutcome` looks in the web demo: captions, table
rows, the #1 card, the status line, query hints and the stylesheet. Pure (no gradio),
so every piece is testable without a browser."""

from __future__ import annotations

import base64
import html
import io
import re
from datetime import datetime

from .images import ImageLoadError, ImageSource, load_image
from .presets import PRESETS
from .query_hints import CATEGORIES, query_hints
from .ranking import WEAK_MATCH_SCORE, RerankResult, matches_well
from .ui_service import Language, RerankOutcome, text

THUMBNAIL_SIDE = 320
NAME_LIMIT = 19  # characters of a file name in a gallery caption; longer ones lose their middle
WORD_SEPARATOR = {"zh": "、", "en": ", "}


def count_text(key: str, count: int, lang: Language) -> str:
    """``1 image`` / ``3 images``: the ``{key}_one`` text for a count of one, else ``key``."""
    return text(f"{key}_one" if count == 1 else key, lang, count=count)


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
    request = outcome.request
    if outcome.report.left_out_reason(result) == "below_threshold":
        return text("reason_below_threshold", lang, threshold=f"{request.score_threshold:g}")
    return text("reason_beyond_top_k", lang, top_k=request.top_k)


def ranked_gallery(outcome: RerankOutcome) -> list[tuple[str, str]]:
    """``(path, caption)`` for each ranked image, best first."""
    return [(outcome.request.images[r.index], caption(r)) for r in outcome.results]


def filtered_gallery(outcome: RerankOutcome, lang: Language) -> list[tuple[str, str]]:
    """``(path, caption + reason)`` for each image that was scored but left out."""
    return [(outcome.request.images[r.index], f"{caption(r)}\n{reason_text(r, outcome, lang)}")
            for r in outcome.filtered_out]


def table_headers(lang: Language) -> list[str]:
    return [text(k, lang) for k in ("col_rank", "col_image", "col_score", "col_raw_score", "col_status")]


def table_rows(outcome: RerankOutcome, lang: Language) -> list[list[str]]:
    """The results, then (for a fixed-length preset) empty slots up to ``top_k``, then the failures."""
    rows = [[str(r.rank), r.source, score_text(r), f"{r.raw_score:.4f}",
             text("status_tied" if r.tied else "status_ok", lang)] for r in outcome.results]
    request = outcome.request
    if request.preset and PRESETS[request.preset].fixed_length and request.top_k:
        rows += [[str(rank), "", "", "", text("status_empty_slot", lang)]
                 for rank in range(len(rows) + 1, request.top_k + 1)]
    rows += [[str(r.rank), r.source, "0.00", "", text("status_error", lang, error=r.error)] for r in outcome.errors]
    return rows


def raw_output_headers(lang: Language) -> list[str]:
    return [text(k, lang) for k in ("col_rank", "col_image", "col_raw_output")]


def raw_output_rows(outcome: RerankOutcome) -> list[list[str]]:
    """What the model said about every image, in rank order."""
    everything = outcome.results + outcome.filtered_out + outcome.errors
    return [[str(r.rank), r.source, r.raw_output or r.error or ""] for r in everything]


def status_line(outcome: RerankOutcome, lang: Language) -> str:
    """Counts, elapsed time, throughput, device, dtype and the pixel budget (visual tokens per image)."""
    return text("status_done", lang, images=count_text("n_images", len(outcome.request.images), lang),
                ranked=len(outcome.results), filtered=len(outcome.filtered_out), errors=len(outcome.errors),
                elapsed=f"{outcome.elapsed_s:.2f}", rate=f"{outcome.images_per_s:.1f}",
                device=outcome.model.get("device", "?"), dtype=outcome.model.get("dtype", "?"),
                tokens=outcome.model.get("visual_tokens", "?"))


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
    if not matches_well(outcome.results[0]):
        return "weak"
    return outcome.winner_strength or "alone"


def lead_text(outcome: RerankOutcome, lang: Language) -> str:
    """How far #1 leads the best other scored image. Never negative: inside a tie group input
    order decides, so a tied #1 may score a little lower than #2, and the card says "tied"."""
    first, others = outcome.results[0], outcome.results[1:] + outcome.filtered_out
    if not others:
        return ""
    if first.tied:
        return text("winner_tied", lang)
    return text("winner_gap", lang, gap=f"{first.score - max(r.score for r in others):.2f}")


def winner_card(outcome: RerankOutcome, lang: Language) -> str:
    """HTML card of #1: its badge and border say how much to trust it (see :func:`winner_level`)."""
    if not outcome.results:
        threshold = outcome.request.score_threshold
        message = text("no_results", lang, threshold=f"{threshold:g}" if threshold is not None else "-")
        return f'<div class="lychee-winner lychee-winner--empty">{html.escape(message)}</div>'
    first, level = outcome.results[0], winner_level(outcome)
    note = text("winner_weak_note", lang, bar=f"{WEAK_MATCH_SCORE:g}") if level == "weak" else ""
    thumbnail = _thumbnail_uri(outcome.request.images[first.index])
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
    reference = outcome.request.query_image
    thumbnail = _thumbnail_uri(reference) if reference is not None else ""
    if not thumbnail:
        return ""
    return (f'<figure class="lychee-winner__reference"><img src="{thumbnail}" alt="">'
            f'<figcaption>{html.escape(text("reference_caption", lang))}</figcaption></figure>')


def download_stem(query: str, when: datetime) -> str:
    """``rerank-<query>-<yyyymmdd-hhmmss>``: a download's file name says what was asked, and when."""
    words = re.sub(r"\W+", "-", query).strip("-")[:40].rstrip("-")
    return f"rerank-{words or 'query'}-{when:%Y%m%d-%H%M%S}"


def hints_markdown(query: str, lang: Language) -> str:
    """Advice for vague words in ``query`` (empty when there are none); never blocks the query."""
    hints = query_hints(query)
    if not hints:
        return ""
    lines = []
    for category in CATEGORIES:
        words = [h.word for h in hints if h.category == category]
        if words:
            lines.append(text(f"hints_{category}", lang, words=WORD_SEPARATOR[lang].join(words)))
    return "\n\n".join([*lines, text("hints_cues", lang)])


CSS = """
.lychee-header h1 { margin-bottom: 0.2rem; }
.lychee-model-status, .lychee-status, .lychee-winner__gap, .lychee-winner__note {
  color: var(--neutral-700); }  /* >= 4.5:1 on the page background (WCAG AA) */
.dark .lychee-model-status, .dark .lychee-status, .dark .lychee-winner__gap, .dark .lychee-winner__note {
  color: var(--neutral-300); }
.lychee-model-status { font-size: var(--text-sm); }
.prose.lychee-hints { border-left: 3px solid #f59e0b; padding: 0.25rem 0.75rem; background: rgba(245, 158, 11, 0.08);
  border-radius: 6px; font-size: var(--text-sm); }
#lychee-query-row { align-items: flex-end; }
#lychee-run { min-height: 2.75rem; }
/* The status line doubles as the progress indicator: room for Gradio's bar and "n/N images". */
#lychee-status { min-height: 2.75rem; }
.lychee-status { font-size: var(--text-md); padding: 0.5rem 0; }
.lychee-winner { display: flex; gap: 1rem; align-items: center; padding: 0.75rem; border-radius: 14px;
  border: 2px solid var(--border-color-primary); background: var(--block-background-fill); }
.lychee-winner__image { width: 132px; height: 132px; object-fit: cover; border-radius: 10px; flex: none; }
.lychee-winner__reference { margin: 0; flex: none; text-align: center; padding-right: 1rem;
  border-right: 1px dashed var(--border-color-primary); }
.lychee-winner__reference img { width: 96px; height: 96px; object-fit: cover; border-radius: 8px; display: block; }
.lychee-winner__reference figcaption { font-size: 0.75rem; color: var(--neutral-700); margin-top: 0.2rem; }
.lychee-winner__badge { display: inline-block; font-size: 0.8rem; font-weight: 600; padding: 0.1rem 0.6rem;
  border-radius: 999px; background: var(--neutral-200); color: var(--neutral-800); }
.lychee-winner__name { font-weight: 600; margin-top: 0.35rem; overflow-wrap: anywhere; }
.lychee-winner__score { font-size: 2rem; font-weight: 700; line-height: 1.1; }
.lychee-winner__score small { font-size: 0.9rem; font-weight: 400; }
.lychee-winner__gap, .lychee-winner__note { font-size: var(--text-sm); }
.lychee-winner__note:empty { display: none; }
.lychee-winner--close { border: 2px dashed #d97706; background: #fffbeb; }
.lychee-winner--close .lychee-winner__badge { background: #fde68a; color: #78350f; }
.lychee-winner--weak { border: 2px solid var(--neutral-400); }
.lychee-winner--weak .lychee-winner__badge { background: var(--neutral-700); color: white; }
.lychee-winner--weak .lychee-winner__score { color: var(--neutral-600); }
.lychee-winner--clear, .lychee-winner--alone { border-color: #16a34a; }
.lychee-winner--clear .lychee-winner__badge, .lychee-winner--alone .lychee-winner__badge {
  background: #dcfce7; color: #166534; }
.lychee-winner--dominant { border: 4px solid #e11d48;
  box-shadow: 0 0 0 3px rgba(225, 29, 72, 0.18), 0 0 22px rgba(225, 29, 72, 0.45); }
.lychee-winner--dominant .lychee-winner__badge { background: #e11d48; color: white; }
.lychee-winner--empty { justify-content: center; border-style: dashed; }
/* The #1 thumbnail of the ranked gallery (Gradio 6 gallery markup: .gallery-item > .thumbnail-item). */
.lychee-ranked--close .gallery-item:first-child .thumbnail-item { border: 2px dashed #d97706; }
.lychee-ranked--weak .gallery-item:first-child .thumbnail-item { border: 2px solid var(--neutral-400); }
.lychee-ranked--clear .gallery-item:first-child .thumbnail-item,
.lychee-ranked--alone .gallery-item:first-child .thumbnail-item { border: 3px solid #16a34a; }
.lychee-ranked--dominant .gallery-item:first-child .thumbnail-item { border: 4px solid #e11d48;
  box-shadow: 0 0 16px rgba(225, 29, 72, 0.6); }
/* Room for the floating label above the first row; no fixed empty height below a short gallery. */
#lychee-images .grid-container, #lychee-ranked .grid-container { padding-top: 2.5rem; }
#lychee-ranked .grid-wrap.fixed-height, #lychee-filtered .grid-wrap.fixed-height { min-height: 0; max-height: none; }
/* Headers and numbers break only between words; names and failure messages anywhere. */
#lychee-table th span, #lychee-table td span { word-break: keep-all; overflow-wrap: normal; }
#lychee-table td:nth-child(2) span, #lychee-table td:nth-child(5) span { overflow-wrap: anywhere; }
/* Captions: rank and score on the first line, then the name (and a reason), all visible. */
#lychee-ranked .caption-label, #lychee-filtered .caption-label { white-space: pre-line; overflow: visible;
  text-overflow: clip; max-width: calc(100% - 8px); line-height: 1.25; font-size: var(--text-sm); }
@media (max-width: 640px) {
  #lychee-top { flex-direction: column; align-items: flex-start; }
  #lychee-ranked .grid-container, #lychee-filtered .grid-container { grid-template-columns: repeat(2, 1fr); }
  .lychee-winner__image { width: 96px; height: 96px; }
  .lychee-winner { flex-wrap: wrap; }
  .lychee-winner__reference { display: flex; align-items: center; gap: 0.5rem; flex-basis: 100%; padding: 0 0 0.5rem;
    border-right: none; border-bottom: 1px dashed var(--border-color-primary); }
  .lychee-winner__reference img { width: 48px; height: 48px; }
  .lychee-winner__reference figcaption { margin-top: 0; }
  #lychee-table span { font-size: var(--text-xs) !important; }
  #lychee-table th, #lychee-table td { padding-left: 2px; padding-right: 2px; }
  #lychee-table .cell-menu-button { display: none; }  /* sorting menus need more room than a phone has */
}
"""
