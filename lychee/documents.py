"""Documents that carry text: the candidates are images, texts, or images with a text each.

lychee-rerank-mm judges all three kinds (its paper's MIRB-40 has text, image and image+text
documents); a product photo with its title is an image+text document. A caller gives one
text per candidate (``None`` or ``""`` for none) beside the images, ``None`` in place of the
image of a text-only document. The texts reach the prompt, so they are cleaned like the
query (:func:`lychee.query.clean_text`): control tokens removed, capped at
``LYCHEE_MAX_DOCUMENT_CHARS``, each change a :class:`~lychee.messages.Notice` that names
the documents. Pure: no torch, no gradio.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .limits import Limits
from .messages import Notice, UserError
from .query import clean_text

LABEL_CHARS = 40  # characters of a text-only document's text in its label
LISTED_DOCUMENTS = 10  # document numbers a notice lists before "..."


@dataclass(frozen=True)
class DocumentTexts:
    """The candidates' texts, cleaned (``""`` where a candidate has none); build it with :func:`prepare_texts`."""

    texts: tuple[str, ...]
    notices: tuple[Notice, ...] = ()

    def __len__(self) -> int:
        return len(self.texts)


def _numbers(indices: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:LISTED_DOCUMENTS])  # the index, as the API and reports give it
    return shown + (", ..." if len(indices) > LISTED_DOCUMENTS else "")


def prepare_texts(texts: Sequence[str | None], limits: Limits) -> DocumentTexts:
    """Each text cleaned like the query; one notice per kind of change, naming the documents by index.

    A text that is not a string (nor None) refuses the request: ``UserError('not_text')``.
    """
    cleaned: list[str] = []
    tokens: dict[str, None] = {}
    with_tokens: list[int] = []
    cut: list[int] = []
    for i, text in enumerate(texts):
        if text is None:
            cleaned.append("")
            continue
        if not isinstance(text, str):
            raise UserError("not_text", field=f"document {i + 1} text", value=repr(text)[:80])
        value, notices = clean_text(text, "document", limits.max_document_chars)
        cleaned.append(value)
        for notice in notices:
            if notice.key == "document_control_tokens":
                with_tokens.append(i)
                tokens.update(dict.fromkeys(notice.params["tokens"].split()))
            else:
                cut.append(i)
    notices = []
    if with_tokens:
        notices.append(Notice("document_control_tokens", {"documents": _numbers(with_tokens),
                                                          "tokens": " ".join(tokens)[:200]}))
    if cut:
        notices.append(Notice("document_truncated", {"documents": _numbers(cut), "limit": limits.max_document_chars}))
    return DocumentTexts(tuple(cleaned), tuple(notices))


def text_label(text: str) -> str:
    """How a text-only document is named in results: its start, in quotes."""
    short = " ".join(text.split())
    return f"“{short[:LABEL_CHARS]}…”" if len(short) > LABEL_CHARS else f"“{short}”"


class DocumentsFileError(ValueError):
    """A documents file that cannot be read; the message names the line."""


def read_documents(path: str | Path) -> tuple[list[str | None], list[str | None]]:
    """``(images, texts)`` of a JSON Lines file with one document a line: ``{"image": path?, "text": str?}``.

    Image paths are relative to the file's folder. Blank lines are skipped. A line that is
    not a JSON object with only those keys raises :class:`DocumentsFileError`; a row with
    neither becomes a document without content, which fails on its own when scored.
    """
    path = Path(path)
    images: list[str | None] = []
    texts: list[str | None] = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentsFileError(f"cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = _row(line, f"{path.name} line {number}")
        image, text = row.get("image"), row.get("text")
        images.append(str(path.parent / image) if image else None)
        texts.append(text)
    return images, texts


def _row(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DocumentsFileError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(row, dict) or set(row) - {"image", "text"}:
        raise DocumentsFileError(f'{where}: expected an object with "image" and/or "text", got {line[:80]}')
    for key in ("image", "text"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise DocumentsFileError(f'{where}: "{key}" must be a string')
    return row
