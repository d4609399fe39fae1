"""``POST /v1/rerank`` (and ``/rerank``, ``/v2/rerank``, ``/invocations``): the rerank API that RAG stacks
already speak.

Dify, LlamaIndex, LangChain, Haystack, LiteLLM and RAGFlow call a rerank provider in one of three
dialects: Jina's, Cohere v2's or vLLM's (0.32). This module reads all three into one :class:`RestRequest`
and writes the answer in the shape of the dialect it was asked in, with lychee's extensions. Pure: no
gradio, no web framework (:mod:`lychee.web.rest_routes` serves it).

Request::

    {"model": str?,                                   # echoed: the app serves one model
     "query": str | {"text"?, "image"?} | {"content": [part, ...]},
     "documents": str | {"content": [...]} | [str | {"text"?, "image"?} | {"content": [part, ...]}, ...],
     "top_n": int?,                                   # 0 or absent: all
     "return_documents": bool?,                       # default true
     "max_tokens_per_doc": int?, "max_tokens_per_query": int?, "truncate_prompt_tokens": int?,
     "use_activation": bool?,                         # false: the yes-no logit instead of p(yes)
     "instruction": str?, "score_threshold": float?, "preset": str?, "tie_epsilon": float?}  # lychee's

A part is ``{"type": "text", "text": str}`` or ``{"type": "image_url", "image_url": {"url": str}}``; a
``{"content": [...]}`` is one document (vLLM 0.32), with at most one image. A bare string is text, as for
every peer; under :data:`IMAGE_URL_PREFIX` a string that is an http(s) URL or a ``data:image/`` URI is an
image instead, for clients that can only send strings. Jina's ``"image"`` may also be bare base64.

Response: ``{"id", "model", "usage": {"prompt_tokens", "total_tokens"}, "results": [...], "errors": [...],
"warnings": [...]}``. ``results`` are in strict ``relevance_score`` order (p(yes), 0-1), at most ``top_n``,
each ``{"index", "relevance_score", "document"?, "score", "tied", "error"}``: ``score`` the 0-10 score of
the ranking rules, ``tied`` their tie mark; documents that could not be used follow the ranked ones with
``relevance_score`` 0.0 and their ``error``, and every one of them is listed in ``errors``.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from ..fetch_loop import FetchBusy
from ..limits import LimitExceeded
from ..messages import Message, UserError, bilingual, error_body
from ..ranking import RerankResult, ScoredImage, partition_with
from ..settings import Settings

PATHS = ("/v1/rerank", "/rerank", "/v2/rerank", "/invocations")
IMAGE_URL_PREFIX = "/image-urls"  # e.g. /image-urls/v1/rerank: strings that are image URLs are images
MODEL_ERRORS = frozenset({"model_unavailable", "model_load_failed", "server_unavailable"})  # 503
FIELDS = {"empty_query": "query", "bad_query_image": "query", "unknown_preset": "preset",  # the field of a 400
          "bad_threshold": "score_threshold", "bad_top_k": "top_n", "texts_length": "documents",
          "bad_max_side": "max_side", "bad_tie_epsilon": "tie_epsilon"}
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]{16,}")
_URL_PREFIXES = ("http://", "https://", "data:image/")
_P_FLOOR = 1e-15  # p(yes) this close to 0 or 1 has no finite logit in float64 (use_activation: false)

Kind = Literal["string", "jina", "content"]  # how a document was sent: its echo follows that dialect


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
        """:func:`lychee.messages.error_body`: what every dialect's clients read."""
        return error_body(str(self), self.key, self.status, self.param)


def bad(field: str, expected: str, value: Any) -> RestError:
    """A 400 for ``field``: ``expected`` is the key of what it must be (``rest_expect_*``), said in both languages."""
    return RestError(400, "rest_bad_field", param=field, field=field, expected=Message(expected),
                     value=repr(value)[:80])


@dataclass(frozen=True)
class RestDocument:
    """One document as sent: its image (a URL or data: URI), its text, the caller's own form and its dialect."""

    image: str | None
    text: str | None
    given: Any
    kind: Kind


@dataclass(frozen=True)
class RestRequest:
    """A request read in any dialect: valid by construction (:func:`parse_request` checks every field)."""

    query: str
    query_image: str | None
    documents: tuple[RestDocument, ...]
    model: str | None
    top_n: int | None
    return_documents: bool
    use_activation: bool
    max_tokens_per_doc: int          # 0: no cut
    max_tokens_per_query: int        # 0: no cut
    truncate_prompt_tokens: int | None  # query and document text tokens together; None or -1: no cut
    instruction: str | None
    score_threshold: float | None
    preset: str | None
    tie_epsilon: float | None


def is_image_string(value: str) -> bool:
    """An http(s) URL or a ``data:image/...`` URI (case-insensitive)."""
    return value.strip()[:11].lower().startswith(_URL_PREFIXES)


def _image_field(value: Any, field: str) -> str:
    """Jina's ``"image"``: a URL, a data: URI, or bare base64 (made a data: URI)."""
    if not isinstance(value, str) or not value.strip():
        raise bad(field, "rest_expect_image", value)
    if is_image_string(value):
        return value.strip()
    if _BASE64.fullmatch(value):
        return "data:;base64," + value  # the decoder reads the format from the bytes
    raise bad(field, "rest_expect_image", value)


def _parts(content: Any, field: str) -> tuple[str | None, str | None]:
    """(image, text) of vLLM content parts: at most one image, the texts joined by a line break."""
    if not isinstance(content, list):
        raise bad(field, "rest_expect_parts", content)
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
                raise bad(f"{where}.image_url.url", "rest_expect_image_url", url)
            images.append(url.strip())
        else:
            raise bad(where, "rest_expect_part", part)
    if len(images) > 1:
        raise RestError(400, "rest_one_image", param=field, field=field, count=len(images))
    return (images[0] if images else None), ("\n".join(texts) if texts else None)


def _item(value: Any, field: str, image_strings: bool) -> tuple[str | None, str | None, Kind]:
    """(image, text, dialect) of a query or a document in any of the three shapes."""
    if isinstance(value, str):
        return (value.strip(), None, "string") if image_strings and is_image_string(value) else (None, value, "string")
    if isinstance(value, dict) and "content" in value and set(value) <= {"content"}:
        return (*_parts(value["content"], f"{field}.content"), "content")
    if isinstance(value, dict) and value and set(value) <= {"text", "image"}:
        text = value.get("text")
        if text is not None and not isinstance(text, str):
            raise bad(f"{field}.text", "rest_expect_text", text)
        image = value.get("image")
        return (_image_field(image, f"{field}.image") if image is not None else None), text, "jina"
    raise bad(field, "rest_expect_document", value)


def _document_list(value: Any) -> list[Any]:
    """vLLM 0.32: a bare string or one ``{"content": [...]}`` is one document."""
    if isinstance(value, str | dict):
        return [value]
    if not isinstance(value, list) or not value:
        raise bad("documents", "rest_expect_list", value)
    return value


def _document(value: Any, field: str, image_strings: bool) -> RestDocument:
    image, text, kind = _item(value, field, image_strings)
    return RestDocument(image, text, value, kind)


def _optional(body: Mapping[str, Any], field: str, kinds: tuple[type, ...], expected: str) -> Any:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise bad(field, expected, value)
    return value


def _count(body: Mapping[str, Any], field: str, lowest: int = 0) -> int | None:
    """A whole number >= ``lowest`` (None when absent); Cohere and vLLM refuse negatives with a 400."""
    value = _optional(body, field, (int,), "rest_expect_count" if lowest == 0 else "rest_expect_truncation")
    if value is not None and value < lowest:
        raise bad(field, "rest_expect_count" if lowest == 0 else "rest_expect_truncation", value)
    return value


def parse_request(body: Any, *, image_strings: bool = False) -> RestRequest:
    """The request in any of the three dialects; :class:`RestError` (400) names the first bad field.
    ``image_strings``: strings that are image URLs are images (the :data:`IMAGE_URL_PREFIX` routes)."""
    if not isinstance(body, dict):
        raise bad("body", "rest_expect_object", body)
    for field in ("query", "documents"):
        if field not in body:
            raise RestError(400, "rest_missing", param=field, field=field)
    query_image, query, _ = _item(body["query"], "query", image_strings)
    documents = tuple(_document(d, f"documents[{i}]", image_strings)
                      for i, d in enumerate(_document_list(body["documents"])))
    return_documents = _optional(body, "return_documents", (bool,), "rest_expect_flag")
    use_activation = _optional(body, "use_activation", (bool,), "rest_expect_flag")
    return RestRequest(
        query or "", query_image, documents, _optional(body, "model", (str,), "rest_expect_text"),
        _count(body, "top_n"), True if return_documents is None else return_documents,
        True if use_activation is None else use_activation,
        _count(body, "max_tokens_per_doc") or 0, _count(body, "max_tokens_per_query") or 0,
        _count(body, "truncate_prompt_tokens", lowest=-1),
        _optional(body, "instruction", (str,), "rest_expect_text"),
        _optional(body, "score_threshold", (int, float), "rest_expect_threshold"),
        _optional(body, "preset", (str,), "rest_expect_preset"),
        _optional(body, "tie_epsilon", (int, float), "rest_expect_tie_epsilon"))


def with_texts(request: RestRequest, query: str, texts: Sequence[str | None]) -> RestRequest:
    """``request`` with its query and its documents' texts replaced (cut to the token limits)."""
    return replace(request, query=query,
                   documents=tuple(replace(d, text=t) for d, t in zip(request.documents, texts)))


class Tokens(Protocol):
    """The model's tokenizer as the API uses it (:class:`lychee.backends.tokens.TokenCounter`)."""

    def count(self, text: str) -> int: ...

    def truncate(self, text: str, limit: int) -> str: ...


def cut_to_tokens(request: RestRequest, tokens: Tokens, max_query_chars: int) -> RestRequest:
    """The query cut to ``max_tokens_per_query``, then each document's text to ``max_tokens_per_doc`` and to
    the room ``truncate_prompt_tokens`` leaves after the query, as vLLM and Cohere cut. A query still longer
    than ``max_query_chars`` is refused (vLLM refuses an over-long prompt) rather than cut unasked."""
    query = request.query
    if request.max_tokens_per_query:
        query = tokens.truncate(query, request.max_tokens_per_query)
    if len(query) > max_query_chars:
        raise RestError(400, "rest_query_too_long", param="query", length=len(query), limit=max_query_chars)
    room = None
    if request.truncate_prompt_tokens not in (None, -1):
        room = request.truncate_prompt_tokens - tokens.count(query)
        if room < 1 and any(d.text for d in request.documents):
            raise RestError(400, "rest_truncation_too_small", param="truncate_prompt_tokens",
                            limit=request.truncate_prompt_tokens, query=request.truncate_prompt_tokens - room)
    texts = []
    for document in request.documents:
        text = document.text
        for limit in (request.max_tokens_per_doc, room):
            if text and limit:
                text = tokens.truncate(text, limit)
        texts.append(text)
    return with_texts(request, query, texts)


def prompt_tokens(request: RestRequest, records: Sequence[ScoredImage], tokens: Tokens,
                  image_tokens: Sequence[int], query_image_tokens: int) -> int:
    """The tokens the model read for the documents it scored: per pair, the query's text and image, the
    instruction if one was sent, the document's text and its image (``image_tokens``, per document)."""
    per_pair = tokens.count(request.query) + tokens.count(request.instruction or "") + query_image_tokens
    return sum(per_pair + tokens.count(request.documents[r.index].text or "") + image_tokens[r.index]
               for r in records if r.error is None)


def returned(document: RestDocument) -> dict[str, Any]:
    """The echo of a document in its dialect: ``{"text"}`` for a string (all three peers), vLLM's
    ``{"multi_modal": parts}`` for content, and Jina's object with a ``text`` always there ("" for an
    image alone), which Jina's clients (LiteLLM) require."""
    if document.kind == "string":
        return {"text": document.given}
    if document.kind == "content":
        return {"multi_modal": document.given["content"]}
    return {**document.given, "text": document.given.get("text") or ""}


def relevance(p_yes: float, use_activation: bool) -> float:
    """p(yes), or with ``use_activation`` false vLLM's raw classifier output: the logit z_yes - z_no."""
    if use_activation:
        return p_yes
    p = min(max(p_yes, _P_FLOOR), 1 - _P_FLOOR)
    return math.log(p) - math.log1p(-p)


def strictly_ranked(records: Sequence[ScoredImage], settings: Settings) -> tuple[list[RerankResult],
                                                                                   list[RerankResult]]:
    """(passing, failed): the documents that pass the threshold in strict score order (equal scores: input
    order), each still marked ``tied`` by the tie rule; and those that could not be used, in input order.
    As every peer, ``top_n`` takes the best n: the tie rule only marks, it does not reorder."""
    groups = partition_with(records, replace(settings, top_k=None))
    return sorted(groups.results, key=lambda r: (-r.score, r.index)), groups.errors


def result_entry(result: RerankResult, request: RestRequest) -> dict[str, Any]:
    """One result: ``relevance_score`` is p(yes) (``raw_score`` / 10), 0.0 for a document that failed."""
    entry = {"index": result.index,
             "relevance_score": 0.0 if result.error else relevance(result.raw_score / 10, request.use_activation),
             "score": result.score, "tied": result.tied, "error": result.error}
    if request.return_documents:
        entry["document"] = returned(request.documents[result.index])
    return entry


def response(request: RestRequest, records: Sequence[ScoredImage], settings: Settings, *, model: str,
             tokens: int, warnings: Sequence[dict[str, str]]) -> dict[str, Any]:
    """The answer: at most ``top_n`` (or the preset's ``top_k``) results, the failures after the ranked ones."""
    passing, failed = strictly_ranked(records, settings)
    results = [*passing, *failed][:settings.top_k]
    return {"id": f"rerank-{uuid.uuid4().hex}", "model": request.model or model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": [result_entry(r, request) for r in results],
            "errors": [{"index": r.index, "error": r.error} for r in failed],
            "warnings": list(warnings)}


def document_urls_and_texts(documents: Sequence[RestDocument]) -> tuple[list[str], list[str]]:
    """Each document's image URL ("" for none) and text ("" for none), as ``rerank_urls`` takes them."""
    return [d.image or "" for d in documents], [d.text or "" for d in documents]
