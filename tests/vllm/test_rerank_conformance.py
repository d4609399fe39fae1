"""vLLM's own rerank API tests (vLLM 0.32: ``tests/entrypoints/pooling/scoring/test_cross_encoder_online.py``,
``test_cross_encoder_online_vision.py`` and ``test_protocol.py``), ported to post to lychee's ``POST
/v1/rerank`` and to judge the answers with vLLM's own pydantic types (``RerankRequest``, ``RerankResponse``).

The app runs in the project's venv (:func:`tests.remote_app.served_app`); this suite runs in the vLLM venv,
where those types are. What vLLM checks of its reference model's scores (``>= 0.9``) cannot hold for a
random checkpoint: those tests check the order instead, and the main suite checks every score against the
library's p(yes). vLLM's ``/score``, ``/pooling``, ``/tokenize`` and ``/v1/models`` tests are not ported:
the app serves reranking only. Where lychee differs on purpose, the test says so (README, "Where lychee
differs")."""

from __future__ import annotations

import base64
import io
import math

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError
from vllm.entrypoints.pooling.scoring.protocol import RerankRequest, RerankResponse

from ..remote_app import served_app

pytestmark = pytest.mark.timeout(300)

QUERY = "What is the capital of France?"
DOCUMENTS = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]


def png_uri(color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server() -> str:
    with served_app() as url:
        yield url


def rerank(server: str, body: dict, path: str = "/rerank") -> httpx.Response:
    return httpx.post(server + path, json={"model": "lychee-rerank-mm", **body}, timeout=120)


def validated(response: httpx.Response) -> RerankResponse:
    response.raise_for_status()
    return RerankResponse.model_validate(response.json())


def scores(answer: RerankResponse) -> list[float]:
    return [r.relevance_score for r in answer.results]


# test_cross_encoder_online.py

def test_rerank_api_texts(server):
    answer = validated(rerank(server, {"query": QUERY, "documents": DOCUMENTS}))
    assert answer.id is not None and len(answer.results) == 2
    assert scores(answer) == sorted(scores(answer), reverse=True)
    assert {r.document.text for r in answer.results} == set(DOCUMENTS)


def test_rerank_api_top_n(server):
    answer = validated(rerank(server, {"query": QUERY, "documents": [*DOCUMENTS, "Cross-encoder models are neat"],
                                       "top_n": 2}))
    assert len(answer.results) == 2
    everything = validated(rerank(server, {"query": QUERY, "documents": [*DOCUMENTS, "Cross-encoder models are neat"]}))
    assert [r.index for r in answer.results] == [r.index for r in everything.results][:2]


def test_rerank_api_max_model_len(server):
    """Deliberate difference: vLLM refuses a prompt over its max_model_len ("Please reduce the length of
    the input prompt"); lychee refuses a query over LYCHEE_MAX_QUERY_CHARS, and says so."""
    refused = rerank(server, {"query": QUERY * 100, "documents": DOCUMENTS})
    assert refused.status_code == 400
    assert "LYCHEE_MAX_QUERY_CHARS" in refused.json()["error"]["message"]


def test_invocations(server):
    body = {"query": QUERY, "documents": DOCUMENTS}
    rerank_output = rerank(server, body).json()
    invocation_output = rerank(server, body, path="/invocations").json()
    assert rerank_output.keys() == invocation_output.keys()
    for ranked, invoked in zip(rerank_output["results"], invocation_output["results"]):
        assert ranked.keys() == invoked.keys()
        assert ranked["relevance_score"] == pytest.approx(invoked["relevance_score"], rel=0.01)


def test_use_activation(server):
    def outputs(use_activation: bool | None) -> dict[int, float]:
        body = {"query": QUERY, "documents": DOCUMENTS, "use_activation": use_activation}
        return {r.index: r.relevance_score for r in validated(rerank(server, body)).results}

    default, with_activation, without = outputs(None), outputs(True), outputs(False)
    assert default == pytest.approx(with_activation, abs=1e-2), "Default should use activation."
    assert without != pytest.approx(with_activation, abs=1e-2), "use_activation false should not."
    assert {i: 1 / (1 + math.exp(-z)) for i, z in without.items()} == pytest.approx(with_activation, abs=1e-2)


def test_rerank_max_tokens_per_doc(server):
    long_doc, short_doc = "The capital of France is Paris. " * 50, "The capital of Brazil is Brasilia."
    answer = validated(rerank(server, {"query": QUERY, "documents": [long_doc, short_doc], "max_tokens_per_doc": 10}))
    assert len(answer.results) == 2 and answer.usage.prompt_tokens > 0


def test_rerank_max_tokens_per_doc_reduces_tokens(server):
    long_doc = "The capital of France is Paris. " * 10
    no_limit = validated(rerank(server, {"query": QUERY, "documents": [long_doc], "truncate_prompt_tokens": 99}))
    limited = validated(rerank(server, {"query": QUERY, "documents": [long_doc], "max_tokens_per_doc": 10}))
    assert limited.usage.prompt_tokens < no_limit.usage.prompt_tokens


def test_rerank_max_tokens_per_doc_validation(server):
    """vLLM 0.32 refuses a negative max_tokens_per_doc and takes 0 as no limit (its io_processor)."""
    refused = rerank(server, {"query": QUERY, "documents": DOCUMENTS[1:], "max_tokens_per_doc": -5})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens_per_doc"
    assert rerank(server, {"query": QUERY, "documents": DOCUMENTS[1:], "max_tokens_per_doc": 0}).status_code == 200


def test_score_max_tokens_per_doc_with_score_template(server):
    answer = validated(rerank(server, {"query": QUERY, "documents": ["The capital of France is Paris. " * 20],
                                       "max_tokens_per_doc": 15}))
    assert len(answer.results) == 1 and answer.usage.prompt_tokens > 0


# test_cross_encoder_online_vision.py (a data: URI for the remote cat photo: CI has no internet)

def test_rerank_api_queries_str_documents_list(server):
    text = {"type": "text", "text": "This product was excellent and exceeded my expectations."}
    image = {"type": "image_url", "image_url": {"url": png_uri((200, 30, 30))}}
    documents = [text["text"], {"content": [text]}, {"content": [image]}, {"content": [text, image]}]
    answer = validated(rerank(server, {"query": "A cat standing in the snow.", "documents": documents}))
    assert answer.id is not None and answer.model is not None and answer.usage is not None
    assert len(answer.results) == 4
    by_index = {r.index: r for r in answer.results}
    assert by_index[0].relevance_score == pytest.approx(by_index[1].relevance_score, rel=0.05)
    assert by_index[0].document.text == text["text"] and by_index[3].document.multi_modal == [text, image]


def test_documents_content_object_is_one_document(server):
    """vLLM 0.32's multimodal example: ``"documents": {"content": [...]}`` gives one result."""
    parts = [{"type": "text", "text": "A red tile"}, {"type": "image_url", "image_url": {"url": png_uri((200, 0, 0))}}]
    answer = validated(rerank(server, {"query": "red", "documents": {"content": parts}}))
    assert len(answer.results) == 1 and answer.results[0].document.multi_modal == parts
    assert len(validated(rerank(server, {"query": "red", "documents": "A red tile"})).results) == 1


def test_two_images_in_one_document_are_refused(server):
    """Deliberate difference: vLLM accepts several images in one document; a lychee-rerank-mm document holds
    one image, so the app answers 400 naming the document rather than score a prompt it was not trained on."""
    image = {"type": "image_url", "image_url": {"url": png_uri((0, 0, 200))}}
    refused = rerank(server, {"query": "blue", "documents": [{"content": [image, image]}]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "documents[0].content"


# test_protocol.py: what vLLM's RerankRequest accepts the app answers; what it refuses the app refuses

@pytest.mark.parametrize("top_n", [None, 0, 1, 2, -1])
def test_top_n_as_rerank_request_validates_it(server, top_n):
    body = {"query": "capital of France", "documents": ["Paris", "Berlin"],
            **({"top_n": top_n} if top_n is not None else {})}
    try:
        request = RerankRequest(**body)
    except ValidationError:
        assert rerank(server, body).status_code == 400
        return
    answer = validated(rerank(server, body))
    assert len(answer.results) == (request.top_n or 2)
