"""Labelled images for calibration, read from CSV files: pure (no model, no torch).

A labels file has a ``relevant`` column (1/0, yes/no, true/false or 是/否; an empty cell
is an unlabelled row, left out) and either

- a ``score`` column: the scores are used as they are and no model is needed. A report CSV
  that the page or ``python -m lychee rank --format csv`` wrote, with a ``relevant`` column
  added by hand, is such a file (its failed images are left out); or
- ``query`` and ``image`` columns (and optionally ``query_image``): the images are scored.
  Image paths are relative to the CSV's folder.

Rows that cannot be used (a missing file, an unknown label) come back as :class:`BadRow`
with their line number; the rest are used.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

LABEL_VALUES = {"1": True, "yes": True, "true": True, "是": True,
                "0": False, "no": False, "false": False, "否": False}


class LabelsFileError(ValueError):
    """A labels file that cannot be read at all (missing, or without the needed columns)."""


@dataclass(frozen=True)
class LabelRow:
    """One labelled image; ``score`` is None until it has been scored."""

    file: str
    line: int
    name: str                  # what the row calls the image (its path or its report ``source``)
    relevant: bool
    query: str                 # "" when the file has no query column
    query_group: str           # rows with the same group were asked the same query
    image: str | None = None   # the image's path, resolved against the CSV's folder
    query_image: str | None = None
    score: float | None = None


@dataclass(frozen=True)
class BadRow:
    """A row left out, and why."""

    file: str
    line: int
    reason: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class LabelsFile:
    rows: list[LabelRow]
    bad_rows: list[BadRow]
    unlabelled: int            # rows whose ``relevant`` cell is empty


def parse_label(value: str) -> bool | None:
    """``True``/``False`` for a known label value (any case), ``None`` for anything else."""
    return LABEL_VALUES.get(value.strip().lower())


def _cell(row: dict[str, str | None], column: str) -> str:
    return (row.get(column) or "").strip()


def _score(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_labels(path: str | os.PathLike) -> LabelsFile:
    """The usable rows of one labels file and the bad ones, in file order.

    Raises :class:`LabelsFileError` when the file is missing or lacks the needed columns."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:  # utf-8-sig: the page's CSV has a BOM
            return _read(path, csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelsFileError(f"cannot read {str(path)!r}: {exc}") from None


def _read(path: Path, reader: csv.DictReader) -> LabelsFile:
    columns = {name.strip().lower(): name for name in reader.fieldnames or ()}
    if "relevant" not in columns:
        raise LabelsFileError(f"{str(path)!r} has no 'relevant' column (its columns: {', '.join(columns) or 'none'})")
    scored = "score" in columns
    if not scored and not {"query", "image"} <= set(columns):
        raise LabelsFileError(f"{str(path)!r} needs a 'score' column, or 'query' and 'image' columns to score")
    rows, bad, unlabelled = [], [], 0
    for raw in reader:
        cells = {key: _cell(raw, original) for key, original in columns.items()}
        line = reader.line_num
        label = cells["relevant"]
        if not label:
            unlabelled += 1
            continue
        relevant = parse_label(label)
        if relevant is None:
            bad.append(BadRow(str(path), line, f"unknown label {label!r} (use 1/0, yes/no, true/false or 是/否)"))
            continue
        query = cells.get("query", "")
        group = f"{query}\n{cells.get('query_image', '')}" if "query" in columns else str(path)
        base = LabelRow(str(path), line, cells.get("image") or cells.get("source") or "", relevant, query, group)
        problem, row = _with_score(base, cells) if scored else _with_image(base, path.parent, cells)
        if row is None:
            bad.append(BadRow(str(path), line, problem))
        else:
            rows.append(row)
    return LabelsFile(rows, bad, unlabelled)


def _with_score(row: LabelRow, cells: dict[str, str]) -> tuple[str, LabelRow | None]:
    """The row with its ``score`` cell, or why it cannot be used."""
    if cells.get("error"):
        return f"the image failed in that run: {cells['error']}", None
    score = _score(cells["score"])
    if score is None:
        return f"no score ({cells['score']!r} is not a number)", None
    return "", replace(row, score=score)


def _with_image(row: LabelRow, folder: Path, cells: dict[str, str]) -> tuple[str, LabelRow | None]:
    """The row with its image (and query image) found under ``folder``, or why it cannot be used."""
    if not row.name:
        return "no image path", None
    image = folder / row.name
    if not image.is_file():
        return f"no such file: {row.name!r}", None
    query_image = cells.get("query_image", "")
    reference = folder / query_image if query_image else None
    if reference is not None and not reference.is_file():
        return f"no such query image: {query_image!r}", None
    if not row.query and reference is None:
        return "empty query (give a query, a query_image or both)", None
    return "", replace(row, image=str(image), query_image=str(reference) if reference else None)


def read_all(paths: Iterable[str | os.PathLike]) -> LabelsFile:
    """Every file's rows together (each file without a query column is one query)."""
    files = [read_labels(p) for p in paths]
    return LabelsFile([r for f in files for r in f.rows], [b for f in files for b in f.bad_rows],
                      sum(f.unlabelled for f in files))
