"""The page's words in Chinese and English: ``strings.json`` beside this module, one entry per
key with a ``zh`` and an ``en`` text. Errors and notices shared with the library and the CLI
live in ``lychee/data/messages.json`` (:mod:`lychee.messages`). Pure: no gradio."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from ..messages import LANGUAGES, Language

__all__ = ["LANGUAGES", "Language", "text", "count_text"]


@cache
def _strings() -> dict[str, dict[str, str]]:
    return json.loads(resources.files(__package__).joinpath("strings.json").read_text(encoding="utf-8"))


def text(key: str, lang: Language, **params: Any) -> str:
    """The UI text ``key`` in ``lang``, with ``{placeholders}`` filled from ``params``."""
    return _strings()[key][lang].format(**params)


def count_text(key: str, count: int, lang: Language) -> str:
    """``1 image`` / ``3 images``: the ``{key}_one`` text for a count of one, else ``key``."""
    return text(f"{key}_one" if count == 1 else key, lang, count=count)
