"""Query hints: find words the model cannot see (好看, 科技感, 非常, beautiful, very, ...).

A reranker judges what is visible. Taste words and intensifiers carry no visual anchor,
so the UI points them out and suggests concrete cues instead. Hints are advice only:
they never block or change a query. The word lists live in ``data/query_hints.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

Category = Literal["subjective", "intensifier"]
CATEGORIES: tuple[Category, ...] = ("subjective", "intensifier")


@dataclass(frozen=True)
class QueryHint:
    """One flagged word, as written in the query, and why it is vague."""

    word: str
    category: Category


def _has_cjk(word: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" for ch in word)


def _pattern(words: Iterable[str]) -> re.Pattern[str]:
    """Chinese words match anywhere; Latin ones only between non-letters (works in mixed text)."""
    parts = [re.escape(w) if _has_cjk(w) else rf"(?<![A-Za-z]){re.escape(w)}(?![A-Za-z])"
             for w in sorted(words, key=len, reverse=True)]
    return re.compile("|".join(parts), re.IGNORECASE)


@cache
def _patterns() -> tuple[dict[Category, re.Pattern[str]], re.Pattern[str]]:
    text = resources.files("lychee").joinpath("data/query_hints.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return {c: _pattern(data[c]) for c in CATEGORIES}, _pattern(data["allowed"])


def query_hints(query: str) -> list[QueryHint]:
    """The vague words in ``query``, each once, in order of appearance."""
    flagged, allowed = _patterns()
    masked = allowed.sub(lambda m: " " * len(m.group()), query or "")
    found: dict[str, tuple[int, QueryHint]] = {}
    for category, pattern in flagged.items():
        for match in pattern.finditer(masked):
            word = query[match.start():match.end()]
            found.setdefault(word.lower(), (match.start(), QueryHint(word, category)))
    return [hint for _, hint in sorted(found.values(), key=lambda item: item[0])]
