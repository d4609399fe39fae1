"""How a :class:`~lychee.ui_service.RerankOutcome` looks in the web demo: captions, table
rows, the #1 card, the status line, query hints and the stylesheet. Pure (no gradio),
so every piece is testable without a browser."""

from __future__ import annotations

import base64
import html
import io

from .images import ImageLoadError, load_image
from .presets import PRESETS
from .query_hints import CATEGORIES, query_hints
from .ranking import RerankResult
from .ui_service import Language, RerankOutcome, left_out_reason, text

THUMBNAIL_SIDE = 320
WORD_SEPARATOR = {"zh": "、", "en": ", "}


def score_text(result: RerankResult) -> str:
    """``9.31``, or ``≈9.31`` when the image is tied with a neighbour."""
    return f"{'≈' if result.tied else ''}{result.score:.2f}"


def caption(result: RerankResult) -> str:
    """Gallery caption: ``#1 · 9.31 · cat.jpg`` (``≈`` before a tied score)."""
    return f"#{result.rank} · {score_text(result)} · {result.source}"


def reason_text(result: RerankResult, outcome: RerankOutcome, lang: Language) -> str:
    """Why an image was filtered out, in words."""
    request = outcome.request
    if left_out_reason(result, request) == "below_threshold":
        return text("reason_below_threshold", lang, threshold=f"{request.score_threshold:g}")
    return text("reason_beyond_top_k", lang, top_k=request.top_k)


def ranked_gallery(outcome: RerankOutcome) -> list[tuple[str, str]]:
    """``(path, caption)`` for each ranked image, best first."""
    return [(outcome.request.images[r.index], caption(r)) for r in outcome.results]


def filtered_gallery(outcome: RerankOutcome, lang: Language) -> list[tuple[str, str]]:
    """``(path, caption — reason)`` for each image that was scored but left out."""
    return [(outcome.request.images[r.index], f"{caption(r)} — {reason_text(r, outcome, lang)}")
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
    """Counts, elapsed time, throughput, device and dtype."""
    return text("status_done", lang, count=len(outcome.request.images), ranked=len(outcome.results),
                filtered=len(outcome.filtered_out), errors=len(outcome.errors), elapsed=f"{outcome.elapsed_s:.2f}",
                rate=f"{outcome.images_per_s:.1f}", device=outcome.model.get("device", "?"),
                dtype=outcome.model.get("dtype", "?"))


def _thumbnail_uri(path: str) -> str:
    try:
        image = load_image(path, max_side=THUMBNAIL_SIDE)
    except ImageLoadError:
        return ""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def winner_card(outcome: RerankOutcome, lang: Language) -> str:
    """HTML card of #1 whose border shows the winner strength (close, clear, dominant)."""
    if not outcome.results:
        threshold = outcome.request.score_threshold
        message = text("no_results", lang, threshold=f"{threshold:g}" if threshold is not None else "-")
        return f'<div class="lychee-winner lychee-winner--empty">{html.escape(message)}</div>'
    first = outcome.results[0]
    strength = outcome.winner_strength
    others = [r.score for r in outcome.results[1:] + outcome.filtered_out]
    gap = text("winner_gap", lang, gap=f"{first.score - max(others):.2f}") if others else ""
    badge = text(f"winner_{strength}" if strength else "winner_alone", lang)
    thumbnail = _thumbnail_uri(outcome.request.images[first.index])
    image = f'<img class="lychee-winner__image" src="{thumbnail}" alt="">' if thumbnail else ""
    return (
        f'<div class="lychee-winner lychee-winner--{strength or "alone"}">{image}'
        f'<div class="lychee-winner__body">'
        f'<span class="lychee-winner__badge">{html.escape(badge)}</span>'
        f'<div class="lychee-winner__name">#1 · {html.escape(first.source)}</div>'
        f'<div class="lychee-winner__score">{score_text(first)}<small> / 10</small></div>'
        f'<div class="lychee-winner__gap">{html.escape(gap)}</div>'
        f"</div></div>"
    )


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
.lychee-model-status { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
.prose.lychee-hints { border-left: 3px solid #f59e0b; padding: 0.25rem 0.75rem; background: rgba(245, 158, 11, 0.08);
  border-radius: 6px; font-size: var(--text-sm); }
.lychee-status { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
.lychee-status--error { color: var(--error-text-color, #b91c1c); font-weight: 600; }
.lychee-winner { display: flex; gap: 1rem; align-items: center; padding: 0.75rem; border-radius: 14px;
  border: 2px solid var(--border-color-primary); background: var(--block-background-fill); }
.lychee-winner__image { width: 132px; height: 132px; object-fit: cover; border-radius: 10px; flex: none; }
.lychee-winner__badge { display: inline-block; font-size: 0.75rem; font-weight: 600; padding: 0.1rem 0.6rem;
  border-radius: 999px; background: var(--neutral-200); color: var(--neutral-800); }
.lychee-winner__name { font-weight: 600; margin-top: 0.35rem; word-break: break-all; }
.lychee-winner__score { font-size: 2rem; font-weight: 700; line-height: 1.1; }
.lychee-winner__score small { font-size: 0.9rem; font-weight: 400; color: var(--body-text-color-subdued); }
.lychee-winner__gap { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
.lychee-winner--close { border-style: dashed; opacity: 0.7; }
.lychee-winner--clear, .lychee-winner--alone { border-color: #16a34a; }
.lychee-winner--clear .lychee-winner__badge, .lychee-winner--alone .lychee-winner__badge {
  background: #dcfce7; color: #166534; }
.lychee-winner--dominant { border: 4px solid #e11d48;
  box-shadow: 0 0 0 3px rgba(225, 29, 72, 0.18), 0 0 22px rgba(225, 29, 72, 0.45); }
.lychee-winner--dominant .lychee-winner__badge { background: #e11d48; color: white; }
/* The #1 thumbnail of the ranked gallery (Gradio 6 gallery markup: .gallery-item > .thumbnail-item). */
.lychee-ranked--close .gallery-item:first-child .thumbnail-item { border: 2px dashed var(--neutral-400); opacity: 0.8; }
.lychee-ranked--clear .gallery-item:first-child .thumbnail-item,
.lychee-ranked--alone .gallery-item:first-child .thumbnail-item { border: 3px solid #16a34a; }
.lychee-ranked--dominant .gallery-item:first-child .thumbnail-item { border: 4px solid #e11d48;
  box-shadow: 0 0 16px rgba(225, 29, 72, 0.6); }
.lychee-winner--empty { justify-content: center; color: var(--body-text-color-subdued); border-style: dashed; }
"""
