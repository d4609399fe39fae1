"""``POST /v1/rerank`` and ``/v2/rerank`` against the peers' own written contracts, field by field, on the
launched app (tiny random checkpoint).

- **Cohere v2**: the API reference of ``POST /v2/rerank`` (docs.cohere.com/reference/rerank, its OpenAPI
  schema) and the cohere-python SDK's ``V2RerankResponse`` types generated from it: request ``model``,
  ``query``, ``documents`` (texts), ``top_n`` (absent: all), ``max_tokens_per_doc`` (truncates; Cohere's
  default 4096), ``priority``; answer ``id``, ``results[{index, relevance_score in [0, 1]}]`` best first,
  optional ``meta``; every error body ``{"message", "id"}``.
- **Jina**: Jina's own API description of ``POST /v1/rerank`` (jina-ai/meta-prompt): request ``model``,
  ``query`` (a string, a TextDoc or an image, URL or base64), ``documents`` (strings, TextDocs, objects
  with ``text`` and/or ``image``), ``top_n`` (defaults to the number of documents), ``return_documents``
  (default true; false: only index and score); answer ``model``, ``usage.total_tokens``,
  ``results[{index, relevance_score, document: {text}}]``; validation errors ``{"error": {"message"}}`` or
  FastAPI's ``{"detail": ...}``.

Where lychee differs on purpose the test's name and docstring say so (and ``docs/api.md`` lists it)."""

from __future__ import annotations

import base64

import httpx
import pytest

pytestmark = pytest.mark.timeout(180)

QUERY = "a red square"
TEXTS = ["A red square", "A blue circle", "Red", "绿色的方块"]
P_TOLERANCE = 1e-6


def post(url: str, body, path: str = "/v1/rerank", **kwargs) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120, **kwargs)


def picture(image_dir, i: int = 0) -> bytes:
    return (image_dir / f"good{i}.png").read_bytes()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def scores(answer: dict) -> dict[int, float]:
    return {r["index"]: r["relevance_score"] for r in answer["results"]}


# Cohere v2 ------------------------------------------------------------------------------------------------


def test_cohere_v2_request_gives_cohere_s_answer_fields(demo_url):
    """model, query, documents (texts), top_n; the answer's id, and results best first, each an integer
    index into documents and a relevance_score in [0, 1]."""
    answer = post(demo_url, {"model": "rerank-v3.5", "query": QUERY, "documents": TEXTS, "top_n": 3},
                  path="/v2/rerank")
    assert answer.status_code == 200
    body = answer.json()
    assert isinstance(body["id"], str) and body["id"]
    results = body["results"]
    assert len(results) == 3
    assert all(type(r["index"]) is int and 0 <= r["index"] < len(TEXTS) for r in results)
    assert all(isinstance(r["relevance_score"], float) and 0 <= r["relevance_score"] <= 1 for r in results)
    ranked = [r["relevance_score"] for r in results]
    assert ranked == sorted(ranked, reverse=True) and len({r["index"] for r in results}) == 3


def test_cohere_top_n_not_passed_returns_every_result(demo_url):
    answer = post(demo_url, {"model": "rerank-v3.5", "query": QUERY, "documents": TEXTS}, path="/v2/rerank").json()
    assert sorted(r["index"] for r in answer["results"]) == list(range(len(TEXTS)))


def test_cohere_max_tokens_per_doc_truncates_each_document(demo_url, tiny_checkpoint):
    """"Long documents will be automatically truncated to the specified number of tokens": the answer for
    the whole text cut at 3 tokens is the answer for the cut text sent as it is."""
    from lychee.backends.tokens import token_counter

    long = "Paris is the capital of France and its largest city. " * 5
    cut = token_counter(str(tiny_checkpoint)).truncate(long, 3)
    truncated = post(demo_url, {"model": "m", "query": QUERY, "documents": [long, "Red"], "max_tokens_per_doc": 3},
                     path="/v2/rerank").json()
    sent_cut = post(demo_url, {"model": "m", "query": QUERY, "documents": [cut, "Red"]}, path="/v2/rerank").json()
    assert scores(truncated) == pytest.approx(scores(sent_cut), abs=P_TOLERANCE)
    assert truncated["usage"] == sent_cut["usage"]


def test_cohere_priority_is_accepted_and_changes_nothing(demo_url):
    """Cohere's ``priority`` (0 the highest): accepted; lychee has one queue, so it orders nothing."""
    body = {"model": "m", "query": QUERY, "documents": TEXTS}
    plain = post(demo_url, body, path="/v2/rerank").json()
    prioritised = post(demo_url, {**body, "priority": 5}, path="/v2/rerank")
    assert prioritised.status_code == 200 and scores(prioritised.json()) == scores(plain)


def test_cohere_error_bodies_carry_message(demo_url, monkeypatch):
    """Every Cohere error schema is ``{"message": str, "id": str}``: the refusal's ``message`` is the
    bilingual text, as in ``error.message`` (OpenAI/vLLM) and ``detail`` (Jina's clients). lychee sends no
    ``id`` in errors (its answers have one)."""
    from lychee.web.doors import API_KEY_ENV_VAR

    bad = post(demo_url, {"model": "m", "query": QUERY, "documents": TEXTS, "top_n": -1}, path="/v2/rerank")
    assert bad.status_code == 400
    assert "top_n" in bad.json()["message"] and bad.json()["message"] == bad.json()["error"]["message"]
    monkeypatch.setenv(API_KEY_ENV_VAR, "the-key")
    unauthorized = post(demo_url, {"model": "m", "query": QUERY, "documents": TEXTS}, path="/v2/rerank")
    assert unauthorized.status_code == 401 and "API key" in unauthorized.json()["message"]


def test_deliberate_cohere_model_is_optional_and_echoed(demo_url):
    """Cohere requires ``model``; the app serves one model, so it may be left out, and is echoed when sent."""
    without = post(demo_url, {"query": QUERY, "documents": TEXTS}, path="/v2/rerank")
    assert without.status_code == 200 and without.json()["model"]
    assert post(demo_url, {"model": "rerank-v3.5", "query": QUERY, "documents": TEXTS},
                path="/v2/rerank").json()["model"] == "rerank-v3.5"


def test_deliberate_cohere_meta_is_not_sent_usage_counts_the_tokens(demo_url):
    """Cohere's optional ``meta`` (api_version, billed_units) is left out: the app bills nothing; the
    tokens read are in ``usage`` (Jina's and vLLM's field), and ``document`` comes back unless
    ``return_documents`` is false (Cohere v2 returns none; its SDK keeps extra fields)."""
    answer = post(demo_url, {"model": "m", "query": QUERY, "documents": TEXTS}, path="/v2/rerank").json()
    assert "meta" not in answer and answer["usage"]["prompt_tokens"] > 0
    assert all(r["document"] == {"text": TEXTS[r["index"]]} for r in answer["results"])


def test_deliberate_cohere_without_max_tokens_per_doc_texts_are_cut_by_characters(demo_url):
    """Cohere cuts at 4096 tokens by default; lychee cuts a longer text than LYCHEE_MAX_DOCUMENT_CHARS
    characters, and says so in ``warnings``."""
    from lychee.limits import Limits

    long = "x" * (Limits().max_document_chars + 10)
    answer = post(demo_url, {"model": "m", "query": QUERY, "documents": [long]}, path="/v2/rerank").json()
    assert [w["code"] for w in answer["warnings"]] == ["document_truncated"]
    assert answer["results"][0]["error"] is None


# Jina ------------------------------------------------------------------------------------------------------


def test_jina_answer_has_model_usage_and_results_with_documents(demo_url):
    """model, query, documents (strings and TextDocs); the answer's model, usage.total_tokens (an
    integer), results with index, relevance_score and document.text."""
    documents = ["A red square", {"text": "A blue circle"}]
    body = post(demo_url, {"model": "jina-reranker-m0", "query": QUERY, "documents": documents}).json()
    assert body["model"] == "jina-reranker-m0"
    assert type(body["usage"]["total_tokens"]) is int and body["usage"]["total_tokens"] > 0
    assert {r["index"]: r["document"] for r in body["results"]} == {0: {"text": "A red square"},
                                                                     1: {"text": "A blue circle"}}
    assert all(isinstance(r["relevance_score"], float) for r in body["results"])


def test_jina_return_documents_defaults_to_true_and_false_leaves_only_index_and_score(demo_url):
    body = {"model": "m", "query": QUERY, "documents": TEXTS}
    assert all("document" in r for r in post(demo_url, body).json()["results"])
    bare = post(demo_url, {**body, "return_documents": False}).json()["results"]
    assert all("document" not in r for r in bare) and len(bare) == len(TEXTS)


def test_jina_top_n_defaults_to_the_number_of_documents(demo_url):
    body = {"model": "m", "query": QUERY, "documents": TEXTS}
    assert len(post(demo_url, body).json()["results"]) == len(TEXTS)
    assert len(post(demo_url, {**body, "top_n": len(TEXTS) + 5}).json()["results"]) == len(TEXTS)
    assert len(post(demo_url, {**body, "top_n": 2}).json()["results"]) == 2


def test_jina_query_as_a_textdoc_is_the_same_query(demo_url):
    body = {"model": "m", "documents": TEXTS}
    assert scores(post(demo_url, {**body, "query": {"text": QUERY}}).json()) == pytest.approx(
        scores(post(demo_url, {**body, "query": QUERY}).json()), abs=P_TOLERANCE)


def test_jina_image_documents_by_data_uri_or_base64_and_their_fields_come_back(demo_url, image_dir):
    """m0's documents: objects with ``text`` and/or ``image`` (a URL or base64); "all text fields will be
    preserved in the response". An image alone comes back with ``"text": ""`` (LiteLLM's Jina client
    requires a text)."""
    raw = base64.b64encode(picture(image_dir)).decode()
    documents = [{"image": data_uri(picture(image_dir))}, {"image": raw}, {"text": "Red", "image": raw}]
    answer = post(demo_url, {"model": "m", "query": QUERY, "documents": documents}).json()
    assert answer["errors"] == []
    got = {r["index"]: r for r in answer["results"]}
    assert got[0]["relevance_score"] == pytest.approx(got[1]["relevance_score"], abs=P_TOLERANCE)
    assert [got[i]["document"] for i in range(3)] == [{**documents[0], "text": ""}, {**documents[1], "text": ""},
                                                       documents[2]]


def test_jina_image_query_as_an_object(demo_url, image_dir):
    """A query that is an image: ``{"image": ...}`` on every route."""
    answer = post(demo_url, {"model": "m", "query": {"image": data_uri(picture(image_dir))}, "documents": TEXTS})
    assert answer.status_code == 200 and len(answer.json()["results"]) == len(TEXTS)


def test_deliberate_jina_image_strings_are_images_only_under_image_urls(demo_url, image_dir):
    """Jina's m0 takes a bare string that is an image URL or base64 for an image; lychee takes a bare string
    for text, as every peer's text models do, except under ``/image-urls``, where an http(s) URL or a
    ``data:image/`` URI string is an image (query or document). Bare base64 is an image only as ``"image"``."""
    image = data_uri(picture(image_dir, 1))
    as_object = post(demo_url, {"model": "m", "query": {"image": image}, "documents": TEXTS}).json()
    as_string = post(demo_url, {"model": "m", "query": image, "documents": TEXTS}, path="/image-urls/v1/rerank")
    assert scores(as_string.json()) == pytest.approx(scores(as_object), abs=P_TOLERANCE)
    as_text = post(demo_url, {"model": "m", "query": image, "documents": TEXTS}).json()
    assert scores(as_text) != pytest.approx(scores(as_object), abs=P_TOLERANCE)


def test_deliberate_jina_bad_input_is_a_400_with_both_error_shapes(demo_url):
    """Jina's validation errors are 422s; lychee answers 400, as Cohere and vLLM do, with Jina's
    ``{"error": {"message"}}`` and FastAPI's ``detail`` (what Jina's LangChain and Haystack clients read)."""
    refused = post(demo_url, {"model": "m", "query": QUERY, "documents": TEXTS, "return_documents": "yes"})
    assert refused.status_code == 400
    body = refused.json()
    assert "return_documents" in body["error"]["message"] and body["detail"] == body["error"]["message"]
