"""The free text that reaches the model's prompt - the query and the instruction - made safe.

Both are user input placed inside a chat template, so both get the same treatment (and so do
the texts of documents, :mod:`lychee.documents`):

- chat-template control tokens (``<|im_end|>``, ``<|image_pad|>``, ...) are replaced by a
  space, so no request can close its turn, answer for the model or add image slots;
- surrounding whitespace is stripped;
- text longer than its limit (``LYCHEE_MAX_QUERY_CHARS``, ``LYCHEE_MAX_INSTRUCTION_CHARS``)
  is cut, so no request can hold the model for minutes.

Each change is a :class:`~lychee.messages.Notice` that the caller shows to the user.
Cleaning is idempotent: clean text passes again unchanged and without notices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .limits import Limits
from .messages import Notice, UserError

# Qwen's <|im_start|>, <|image_pad|>, ...; whitespace never occurs inside one, so the space
# that replaces a token cannot form a new one with its neighbours.
CONTROL_TOKEN = re.compile(r"<\|[^<>|\s]{1,40}\|>")
SURROGATE = re.compile("[\ud800-\udfff]")  # a lone half of a UTF-16 pair: no text can hold it


@dataclass(frozen=True)
class PromptText:
    """The cleaned query and instruction (None: the protocol's default) and what was changed."""

    query: str                # "" when the query is an image alone
    instruction: str | None
    notices: tuple[Notice, ...] = ()


def clean_text(text: str, field: str, max_chars: int) -> tuple[str, list[Notice]]:
    """``text`` cleaned (see the module docstring) and the notices ``{field}_control_tokens`` and
    ``{field}_truncated`` of what changed; ``UserError('not_text')`` when it is not a string."""
    if not isinstance(text, str):
        raise UserError("not_text", field=field, value=repr(text)[:80])
    notices = []
    surrogates = len(SURROGATE.findall(text))
    if surrogates:  # not encodable: the prompt, the log and the JSON download would each fail on them
        notices.append(Notice(f"{field}_invalid_characters", {"count": surrogates}))
        text = SURROGATE.sub("\ufffd", text)
    tokens = CONTROL_TOKEN.findall(text)
    if tokens:
        notices.append(Notice(f"{field}_control_tokens", {"tokens": " ".join(dict.fromkeys(tokens))[:200]}))
        text = CONTROL_TOKEN.sub(" ", text)
    text = text.strip()
    if len(text) > max_chars:
        notices.append(Notice(f"{field}_truncated", {"length": len(text), "limit": max_chars}))
        text = text[:max_chars].rstrip()
    return text, notices


def clean_query(query: str, max_chars: int) -> str:
    """``query`` cleaned (see the module docstring); an empty one raises ``UserError('empty_query')``."""
    return _clean_query(query, max_chars)[0]


def _clean_query(query: str, max_chars: int) -> tuple[str, list[Notice]]:
    text, notices = clean_text(query if query is not None else "", "query", max_chars)
    if not text:
        raise UserError("empty_query")
    return text, notices


def prepare_text(query: str | None, instruction: str | None, limits: Limits, *,
                 image_query: bool = False) -> PromptText:
    """The query and instruction as they may enter the prompt, with the notices of what changed.

    An empty or blank instruction means the protocol's default one. With ``image_query``
    (a query image is given) the query text may be empty: the query is then the image alone.
    """
    if image_query:
        query, notices = clean_text(query if query is not None else "", "query", limits.max_query_chars)
    else:
        query, notices = _clean_query(query, limits.max_query_chars)
    if instruction is None:
        return PromptText(query, None, tuple(notices))
    instruction, more = clean_text(instruction, "instruction", limits.max_instruction_chars)
    return PromptText(query, instruction or None, tuple(notices + more))
