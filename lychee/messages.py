"""What the reranker tells a person, in Chinese and English: errors that refuse a request
(:class:`UserError`) and notices that let it run changed (:class:`Notice`, e.g. a query cut
to the length limit). The texts live in ``data/messages.json``; every surface - the
library, the CLI, the web page and its API - shows the same words. Pure: no torch, no gradio.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

Language = Literal["zh", "en"]
LANGUAGES: tuple[Language, ...] = ("zh", "en")


# C0 and C1 control characters (newline, carriage return, escape, ...) and Unicode line breaks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: object) -> str:
    """``text`` with every control character written as its escape (``\\n``, ``\\x1b``): what a
    user named (an upload, a URL, a path) can never forge a line of a log."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


@cache
def _messages() -> dict[str, dict[str, str]]:
    return json.loads(resources.files("lychee").joinpath("data/messages.json").read_text(encoding="utf-8"))


def message(key: str, lang: Language, **params: Any) -> str:
    """The message ``key`` in ``lang`` with ``{placeholders}`` filled from ``params``; a
    parameter that is itself a :class:`Message` (a cause inside a refusal) is said in ``lang`` too."""
    said = {name: value.text(lang) if isinstance(value, Message) else value for name, value in params.items()}
    return _messages()[key][lang].format(**said)


def bilingual(key: str, **params: Any) -> str:
    """``English / 中文``: for API clients, whose language is unknown."""
    return f"{message(key, 'en', **params)} / {message(key, 'zh', **params)}"


def error_body(message: str, kind: str, status: int, param: str | None = None) -> dict[str, Any]:
    """The JSON of an HTTP refusal that every dialect's clients read: vLLM's and OpenAI's ``{"error":
    {"message", "type", "param", "code"}}``, ``detail`` (the message), which Jina's clients (LangChain,
    Haystack) and FastAPI's read, and ``message``, Cohere's error schema."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}, "detail": message,
            "message": message}


class UserError(ValueError):
    """A problem the user can fix, named by ``key`` in ``data/messages.json``.

    ``str(error)`` is English (library and CLI); :meth:`text` gives one language (the
    page) and :meth:`bilingual` both (the web API).
    """

    def __init__(self, key: str, **params: Any) -> None:
        self.key = key
        self.params = params
        super().__init__(message(key, "en", **params))

    def text(self, lang: Language) -> str:
        return message(self.key, lang, **self.params)

    def bilingual(self) -> str:
        return bilingual(self.key, **self.params)


class InputWarning(UserWarning):
    """Warning category of the library's notices (``warnings.warn``), e.g. a truncated query."""


@dataclass(frozen=True)
class Message:
    """A message by key, said in either language when it is shown (``str()``: English)."""

    key: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def text(self, lang: Language) -> str:
        return message(self.key, lang, **self.params)

    def __str__(self) -> str:
        return self.text("en")


@dataclass(frozen=True)
class Notice(Message):
    """Something the reranker changed in a request and the user should know about."""

    def to_dict(self) -> dict[str, str]:
        """``{"code": key, "message": "English / 中文"}``, as the web API reports it."""
        return {"code": self.key, "message": bilingual(self.key, **self.params)}
