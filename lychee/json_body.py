"""A JSON request body read within bounds: the number of values and the nesting depth are counted
before anything is built, so no body costs more than a small multiple of its size.

``json.loads`` turns ``{},`` - 3 bytes - into an 8-byte list slot and a 64-byte dict: 100 MB of
them made 6.7 GB. :func:`read_json` first walks the body's structure (strings are skipped at
C speed by json's own scanner; the walk stops at the first value over the count), then parses a body that passed.
Pure: no web framework.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring
from typing import Any

from .limits import LimitExceeded
from .messages import UserError

MAX_DEPTH = 32  # the deepest request shape (vLLM content parts) nests 5 levels
VALUES_PER_DOCUMENT = 32  # a document in vLLM's content-part form takes about 10
BASE_VALUES = 64  # the other fields, the query's parts among them

_STRUCTURE = re.compile(r'[\[\]{},"]')
_WINDOW = 2 ** 20  # characters searched at a time: other threads (the server's loop) run in between
_OPENING = frozenset("[{")
_CLOSING = frozenset("]}")


def max_values(max_documents: int) -> int:
    """The most values a body for ``max_documents`` documents may hold."""
    return BASE_VALUES + VALUES_PER_DOCUMENT * max_documents


def _walk(text: str, max_documents: int, max_depth: int) -> None:
    """Raise when ``text`` holds more than :func:`max_values` values or nests deeper than
    ``max_depth``; a string without its closing quote ends the walk (the parser then says what is wrong)."""
    limit = max_values(max_documents)
    values, depth, position = 1, 0, 0
    while position < len(text):
        found = _STRUCTURE.search(text, position, position + _WINDOW)
        if found is None:
            position += _WINDOW
            continue
        char, position = found.group(), found.end()
        if char == '"':
            try:
                position = scanstring(text, position)[1]  # json's own C scanner, escapes and all
            except ValueError:
                return
            continue
        if char in _OPENING:
            depth += 1
            if depth > max_depth:
                raise UserError("rest_too_deep", limit=max_depth, field="body")
        elif char in _CLOSING:
            depth -= 1
            continue
        values += 1
        if values > limit:
            raise LimitExceeded("rest_too_many_values", limit=f"{limit:,}", per_document=VALUES_PER_DOCUMENT,
                                max_images=max_documents)


def read_json(body: bytes, *, max_documents: int, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``body``: :class:`~lychee.limits.LimitExceeded` past :func:`max_values` values,
    ``UserError`` (``rest_too_deep``, ``rest_bad_json``, field ``body``) when nested too deep or not JSON."""
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")  # as json.loads decodes bytes
    except UnicodeDecodeError:
        raise UserError("rest_bad_json", field="body") from None
    _walk(text, max_documents, max_depth)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # ValueError: JSONDecodeError, or a number of too many digits
        raise UserError("rest_bad_json", field="body") from None
