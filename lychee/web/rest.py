"""``POST /v1/rerank`` (and ``/rerank``, ``/v2/rerank``): the rerank API that RAG stacks already speak.

Dify, LlamaIndex (``JinaRerank``), LangChain (``CohereRerank`` over ``cohere.ClientV2``), LiteLLM and
RAGFlow call a rerank provider in one of three shapes: Jina's, Cohere v2's or vLLM's. This module
reads all three into one :class:`RestRequest` and writes the answer in vLLM's and Jina's shape,
with lychee's extensions. Pure: no gradio, no web framework (:mod:`lychee.web.rest_routes` serves it).

Request::

    {"model": str?,                                   # ignored: the app serves one model
     "query": str | {"text"?, "image"?} | {"content": [part, ...]},
     "documents": [str | {"text"?, "image"?} | {"content": [part, ...]}, ...],
     "top_n": int?,                                   # 0 or absent: all
     "return_documents": bool?,                       # default true
     "instruction": str?, "score_threshold": float?, "preset": str?}   # lychee's extensions

A part is ``{"type": "text", "text": str}`` or ``{"type": "image_url", "image_url": {"url": str}}``.
A string that is an http(s) URL or a ``data:image/...`` URI is an image; any other string is text.
Jina's ``"image"`` may also be bare base64. vLLM's ``"documents": {"content": [...]}`` is one
document per part.

Response: ``{"id", "model", "usage": {"total_tokens"}, "results": [...], "warnings": [...]}``, the
results best first, each ``{"index", "relevance_score", "score", "tied", "error", "document"?}``:
``relevance_score`` is p(yes) in 0-1, ``score`` the 0-10 score the ranking rules used, ``tied``
their tie mark; documents that could not be used come last with ``relevance_score`` 0.0 and their
``error``. ``total_tokens`` is null: the app does not count tokens.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..fetch_loop import FetchBusy
from ..limits import LimitExceeded
from ..messages import UserError, bilingual
from ..ranking import RerankResult
from ..report import Report

PATHS = ("/v1/rerank", "/rerank", "/v2/rerank")
MODEL_ERRORS = frozenset({"model_unavailable", "model_load_failed", "server_unavailable"})  # 503
FIELDS = {"empty_query": "query", "bad_query_image": "query", "unknown_preset": "preset",  # the field of a 400
          "bad_threshold": "score_threshold", "bad_top_k": "top_n", "texts_length": "documents",
          "bad_max_side": "max_side", "bad_tie_epsilon": "tie_epsilon"}
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]{16,}")
_URL_PREFIXES = ("http://", "https://", "data:image/")


class RestError(Exception):
    """A refused request: its HTTP status, bilingual message, the field at fault (if one) and an error type."""

    def __init__(self, status: int, key: str, *, param: str | None = None, **params: Any) -> None:
        params.pop("param", None)
        super().__init__(bilingual(key, **params))
        self.status, self.key, self.param = status, key, param

    @classmethod
    def refusing(cls, error: UserError) -> RestError:
        """The HTTP refusal of a :class:`~lychee.messages.UserError`: 429 when there is no place to fetch
        its URLs now, 413 for a limit, 503 when the model is not there, else 400 naming the field."""
        status = (429 if isinstance(error, FetchBusy) else 413 if isinstance(error, LimitExceeded)
                  else 503 if error.key in MODEL_ERRORS else 400)
        field = error.params.get("field") or FIELDS.get(error.key)
        return cls(status, error.key, param=field if status == 400 else None, **error.params)

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``, as vLLM's and OpenAI's servers answer."""
        return {"error": {"message": str(self), "type": self.key, "param": self.param, "code": self.status}}


def bad(field: str, expected: str, value: Any) -> RestError:
    return RestError(400, "rest_bad_field", param=field, field=field, expected=expected, value=repr(value)[:80])


@dataclass(frozen=True)
class RestDocument:
    """One document as sent: its image (a URL or data: URI), its text, and the caller's own form."""

    image: str | None
    text: str | None
    given: Any


@dataclass(frozen=True)
class RestRequest:
    query: str
    query_image: str | None
    documents: tuple[RestDocument, ...]
    top_n: int | None
    return_documents: bool
    instruction: str | None
    score_threshold: float | None
    preset: str | None


def is_image_string(value: str) -> bool:
    """An http(s) URL or a ``data:image/...`` URI (case-insensitive); anything else is text."""
    return value.strip()[:11].lower().startswith(_URL_PREFIXES)


def _image_field(value: Any, field: str) -> str:
    """Jina's ``"image"``: a URL, a data: URI, or bare base64 (made a data: URI)."""
    if not isinstance(value, str) or not value.strip():
        raise bad(field, "an image URL, a data: URI or base64", value)
    if is_image_string(value):
        return value.strip()
    if _BASE64.fullmatch(value):
        return "data:;base64," + value  # the decoder reads the format from the bytes
    raise bad(field, "an image URL, a data: URI or base64", value)


def _parts(content: Any, field: str) -> tuple[str | None, str | None]:
    """(image, text) of vLLM content parts: at most one image, the texts joined by a line break."""
    if not isinstance(content, list):
        raise bad(field, "a list of content parts", content)
    images: list[str] = []
    texts: list[str] = []
    for i, part in enumerate(content):
        where = f"{field}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url.strip():
                raise bad(f"{where}.image_url.url", "an image URL or a data: URI", url)
            images.append(url.strip())
        else:
            raise bad(where, '{"type": "text", "text": ...} or {"type": "image_url", "image_url": {"url": ...}}',
                      part)
    if len(images) > 1:
        raise RestError(400, "rest_one_image", param=field, field=field, count=len(images))
    return (images[0] if images else None), ("\n".join(texts) if texts else None)


def _item(value: Any, field: str) -> tuple[str | None, str | None]:
    """(image, text) of a query or a document in any of the three shapes."""
    if isinstance(value, str):
        return (value.strip(), None) if is_image_string(value) else (None, value)
    if isinstance(value, dict) and "content" in value:
        return _parts(value["content"], f"{field}.content")
    if isinstance(value, dict) and set(value) <= {"text", "image"}:
        text = value.get("text")
        if text is not None and not isinstance(text, str):
            raise bad(f"{field}.text", "text", text)
        image = value.get("image")
        return (_image_field(image, f"{field}.image") if image is not None else None), text
    raise bad(field, 'a string, {"text", "image"} or {"content": [...]}', value)


def _documents(value: Any) -> list[Any]:
    if isinstance(value, dict) and isinstance(value.get("content"), list):
        return list(value["content"])  # vLLM: one document per content part
    if not isinstance(value, list) or not value:
        raise bad("documents", "a non-empty list", value)
    return value


def _document(value: Any, field: str) -> RestDocument:
    if isinstance(value, dict) and "type" in value:  # a bare content part (vLLM's one-document-per-part form)
        image, text = _parts([value], field)
    else:
        image, text = _item(value, field)
    return RestDocument(image, text, value)


def _optional(body: Mapping[str, Any], field: str, kinds: tuple[type, ...], expected: str) -> Any:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise bad(field, expected, value)
    return value


def parse_request(body: Any) -> RestRequest:
    """The request in any of the three shapes; :class:`RestError` (400) names the first bad field."""
    if not isinstance(body, dict):
        raise bad("body", "a JSON object", body)
    if "query" not in body:
        raise RestError(400, "rest_missing", param="query", field="query")
    if "documents" not in body:
        raise RestError(400, "rest_missing", param="documents", field="documents")
    query_image, query = _item(body["query"], "query")
    documents = tuple(_document(d, f"documents[{i}]") for i, d in enumerate(_documents(body["documents"])))
    top_n = _optional(body, "top_n", (int,), "a whole number >= 0 (0: all)")
    if top_n is not None and top_n < 0:
        raise bad("top_n", "a whole number >= 0 (0: all)", top_n)
    return_documents = _optional(body, "return_documents", (bool,), "true or false")
    threshold = _optional(body, "score_threshold", (int, float), "a number from 0 to 10")
    return RestRequest(query or "", query_image, documents, top_n or None,
                       True if return_documents is None else return_documents,
                       _optional(body, "instruction", (str,), "text"), threshold,
                       _optional(body, "preset", (str,), "a preset name"))


def _returned(document: RestDocument) -> dict[str, Any]:
    return {"text": document.given} if isinstance(document.given, str) else document.given


def result_entry(result: RerankResult, request: RestRequest) -> dict[str, Any]:
    """One result: ``relevance_score`` is p(yes) (``raw_score`` / 10), 0.0 for a document that failed."""
    entry = {"index": result.index, "relevance_score": 0.0 if result.error else result.raw_score / 10,
             "score": result.score, "tied": result.tied, "error": result.error}
    if request.return_documents:
        entry["document"] = _returned(request.documents[result.index])
    return entry


def response(request: RestRequest, report: Report, model: str) -> dict[str, Any]:
    """The answer: the ranked results (``top_n`` and ``score_threshold`` applied), then the failures."""
    return {"id": f"rerank-{uuid.uuid4().hex}", "model": model, "usage": {"total_tokens": None},
            "results": [result_entry(r, request) for r in [*report.results, *report.errors]],
            "warnings": [n.to_dict() for n in report.warnings]}


def document_urls_and_texts(documents: Sequence[RestDocument]) -> tuple[list[str], list[str]]:
    """Each document's image URL ("" for none) and text ("" for none), as ``rerank_urls`` takes them."""
    return [d.image or "" for d in documents], [d.text or "" for d in documents]
