"""One report of one rerank run, for every surface: the CLI's json/csv/md output and the web
page's downloads and ``/rerank`` API answer come from :class:`Report`.

Every input appears exactly once: in ``results`` (ranked, best first), ``filtered_out``
(below the threshold or beyond ``top_k``), ``errors`` (failed to load or score) or
``skipped`` (the CLI's files without an image extension). Ranks run on across
``results``, ``filtered_out`` and ``errors``. Pure: no torch, no gradio.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from . import ranking
from .messages import Notice
from .protocol import QueryKind, query_kind
from .ranking import RerankResult, ScoredImage, WinnerStrength
from .request import Request
from .settings import Settings

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads such a cell as a formula


def spreadsheet_safe(value: Any) -> Any:
    """``value`` for a CSV cell: text that a spreadsheet would run as a formula gets a leading
    ``'`` (the OWASP rule); numbers, flags and other text pass unchanged."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


SCHEMA_VERSION = 4
CSV_COLUMNS = ("group", "rank", "index", "source", "score", "raw_score", "tied", "reason", "error", "raw_output")
EMPTY_SLOT = "—"  # the source of an unfilled slot of a fixed-length (pipeline preset) report


@dataclass(frozen=True)
class Report:
    """What one run produced, grouped and ranked by the settings it ran with."""

    query: str
    settings: Settings             # validated, the preset's defaults filled in
    instruction: str | None        # None: the protocol's default
    model: dict[str, str]          # LycheeReranker.describe(); empty when no model was loaded
    results: list[RerankResult]
    filtered_out: list[RerankResult]
    errors: list[RerankResult]
    warnings: tuple[Notice, ...] = ()
    skipped: tuple[str, ...] = ()
    elapsed_s: float = 0.0
    query_image: str | None = None  # the name of the query image, if the query has one
    scored: int = 0                 # documents the model scored in this run
    from_store: int = 0             # documents whose score the score store kept from an earlier run

    @classmethod
    def build(cls, request: Request, records: Sequence[ScoredImage], *, model: dict[str, str] | None = None,
              skipped: Sequence[str] = (), elapsed_s: float = 0.0, notices: Sequence[Notice] = ()) -> Report:
        """Rank ``records`` (every image, in input order) by the request's settings into a report;
        its warnings are the query's notices and ``notices`` (the documents' texts')."""
        query = request.query
        groups = ranking.partition_with(records, request.settings)
        scored_by = [r.scored_by for r in records]
        return cls(query.text, request.settings, query.instruction, dict(model or {}), groups.results,
                   groups.filtered_out, groups.errors, query.notices + tuple(notices), tuple(skipped), elapsed_s,
                   query.image_label, scored_by.count("model"), scored_by.count("store"))

    @property
    def query_kind(self) -> QueryKind:
        """``text``, ``image`` or ``image+text``."""
        return query_kind(self.query, self.query_image is not None)

    @property
    def images(self) -> int:
        """How many images were scored or failed (skipped files not counted)."""
        return len(self.results) + len(self.filtered_out) + len(self.errors)

    @property
    def images_per_s(self) -> float:
        return self.images / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def slots(self) -> int | None:
        """The fixed number of result rows of a fixed-length preset (``pipeline``), else None."""
        preset = self.settings.preset
        return self.settings.top_k if preset is not None and preset.fixed_length else None

    @property
    def winner_strength(self) -> WinnerStrength | None:
        """How decisive #1 is over the best other scored image (``None`` without a #1)."""
        return ranking.winner_strength(self.results + self.filtered_out) if self.results else None

    def left_out_reason(self, result: RerankResult) -> Literal["below_threshold", "beyond_top_k"]:
        """Why a scored image is not among the results."""
        threshold = self.settings.score_threshold
        return "below_threshold" if threshold is not None and result.score < threshold else "beyond_top_k"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (schema version 4)::

            {"schema_version": 4, "query": str, "query_kind": "text" | "image" | "image+text",
             "query_image": str | null, "preset": str | null,
             "settings": {"score_threshold": float | null, "top_k": int | null, "instruction": str | null,
                          "normalize": bool, "tie_epsilon": float, "max_side": int},
             "model": {"backend", "model", "device", "dtype", "attention", "mode", "visual_tokens"},
             "counts": {"images": int, "results": int, "filtered_out": int, "errors": int, "skipped": int,
                        "scored": int, "from_store": int},
             "slots": int | null, "winner_strength": "close" | "clear" | "dominant" | null,
             "results": [record, ...], "filtered_out": [record + {"reason"}, ...], "errors": [record, ...],
             "skipped": [path, ...], "warnings": [{"code": str, "message": str}, ...],
             "elapsed_s": float, "images_per_s": float}

        ``record`` is ``RerankResult.to_dict()``; ``reason`` is ``below_threshold`` or ``beyond_top_k``.
        ``scored`` counts the documents the model scored, ``from_store`` those whose score came
        from the score store (the others failed before reaching the model).
        """
        s = self.settings
        return {
            "schema_version": SCHEMA_VERSION,
            "query": self.query,
            "query_kind": self.query_kind,
            "query_image": self.query_image,
            "preset": s.preset.name if s.preset else None,
            "settings": {"score_threshold": s.score_threshold, "top_k": s.top_k, "instruction": self.instruction,
                         "normalize": s.normalize, "tie_epsilon": s.tie_epsilon, "max_side": s.max_side},
            "model": dict(self.model),
            "counts": {"images": self.images, "results": len(self.results), "filtered_out": len(self.filtered_out),
                       "errors": len(self.errors), "skipped": len(self.skipped), "scored": self.scored,
                       "from_store": self.from_store},
            "slots": self.slots,
            "winner_strength": self.winner_strength,
            "results": [r.to_dict() for r in self.results],
            "filtered_out": [{**r.to_dict(), "reason": self.left_out_reason(r)} for r in self.filtered_out],
            "errors": [r.to_dict() for r in self.errors],
            "skipped": list(self.skipped),
            "warnings": [n.to_dict() for n in self.warnings],
            "elapsed_s": round(self.elapsed_s, 4),
            "images_per_s": round(self.images_per_s, 3),
        }

    def to_csv(self) -> str:
        """One row per input, ``CSV_COLUMNS``, in rank order; ``group`` names the JSON list it is
        in (``results``, ``filtered_out``, ``errors``, ``skipped``), or ``empty`` for an unfilled slot."""
        data = self.to_dict()
        rows = [{**r, "group": "results"} for r in data["results"]]
        rows += [{"group": "empty", "rank": rank, "source": EMPTY_SLOT}
                 for rank in range(len(self.results) + 1, (self.slots or 0) + 1)]
        for group in ("filtered_out", "errors"):
            rows += [{**r, "group": group} for r in data[group]]
        rows += [{"group": "skipped", "source": path} for path in self.skipped]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: spreadsheet_safe(value) for key, value in row.items()} for row in rows)
        return buffer.getvalue()
