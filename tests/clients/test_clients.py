"""Real rerank clients that nobody here wrote, pointed at the app's ``POST /v1/rerank``: Cohere's SDK,
LangChain's ``CohereRerank`` and ``JinaRerank``, Haystack's ``CohereRanker`` and ``JinaRanker``, LiteLLM's
``rerank`` through its cohere, jina_ai and hosted_vllm providers, LlamaIndex's ``JinaRerank``, rerankers'
``APIRanker``, Dify's plugin SDK ``OAICompatRerankModel``, and the vision format of Dify's
OpenAI-API-compatible plugin. Each ranks texts and images (image documents as data: URI strings under
``/image-urls``, the clients' only way to send them; Dify's vision format as vLLM content parts) as the route
itself answers, and surfaces the route's error message, except rerankers' and Dify's SDK, which drop it.

Runs in ``.venv-clients`` (``make test-clients``); the app runs in the project's venv
(:func:`tests.remote_app.served_app`), and the main suite checks the route's scores against the library's."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import httpx
import pytest
from PIL import Image

from ..remote_app import served_app

pytestmark = pytest.mark.timeout(300)

QUERY = "a red square"
MODEL = "lychee-rerank-mm"
P_TOLERANCE = 1e-6
TOO_LONG = "a red square " * 100  # over LYCHEE_MAX_QUERY_CHARS: the route answers 400
REFUSAL = "LYCHEE_MAX_QUERY_CHARS"  # in the route's message, which each client must pass on


def png_uri(color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


TEXTS = ["A red square with a stripe", "A blue circle", "Red", "绿色的方块"]
DOCUMENTS = [*TEXTS, png_uri((200, 30, 30)), png_uri((30, 30, 200))]  # texts, then images as strings


@pytest.fixture(scope="module")
def app() -> str:
    with served_app() as url:
        yield url


@pytest.fixture(scope="module")
def expected(app) -> list[tuple[int, float]]:
    """(index, relevance_score), best first, as the route answers the same documents."""
    answer = httpx.post(f"{app}/image-urls/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}, timeout=120)
    answer.raise_for_status()
    results = answer.json()["results"]
    assert all(r["error"] is None for r in results), "every document, the images too, must have been scored"
    return [(r["index"], r["relevance_score"]) for r in results]


def check(ranked: list[tuple[int, float]], expected: list[tuple[int, float]], top_n: int | None = None) -> None:
    want = expected[:top_n] if top_n else expected
    assert [i for i, _ in ranked] == [i for i, _ in want]
    assert [s for _, s in ranked] == pytest.approx([s for _, s in want], abs=P_TOLERANCE)


def test_cohere_client_v2(app, expected):
    import cohere

    client = cohere.ClientV2(api_key="unused", base_url=f"{app}/image-urls")  # posts to /image-urls/v2/rerank
    response = client.rerank(model=MODEL, query=QUERY, documents=DOCUMENTS, top_n=4)
    check([(r.index, r.relevance_score) for r in response.results], expected, 4)
    with pytest.raises(cohere.core.ApiError, match=REFUSAL):
        client.rerank(model=MODEL, query=TOO_LONG, documents=DOCUMENTS)


def test_langchain_cohere_rerank(app, expected):
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    compressor = CohereRerank(base_url=f"{app}/image-urls", cohere_api_key="unused", model=MODEL, top_n=3)
    ranked = compressor.compress_documents(langchain_documents(), QUERY)
    check([(d.metadata["i"], d.metadata["relevance_score"]) for d in ranked], expected, 3)
    with pytest.raises(Exception, match=REFUSAL):
        compressor.compress_documents([Document(page_content="Red")], TOO_LONG)


def test_langchain_community_jina_rerank(app, expected, monkeypatch):
    from langchain_community.document_compressors import jina_rerank
    from langchain_core.documents import Document

    # JinaRerank has no base URL argument: its module's JINA_API_URL is the one place the endpoint is set.
    monkeypatch.setattr(jina_rerank, "JINA_API_URL", f"{app}/image-urls/v1/rerank")
    reranker = jina_rerank.JinaRerank(jina_api_key="unused", model=MODEL, top_n=3)
    ranked = reranker.compress_documents(langchain_documents(), QUERY)
    check([(d.metadata["i"], d.metadata["relevance_score"]) for d in ranked], expected, 3)
    with pytest.raises(RuntimeError, match=REFUSAL):  # it raises the body's "detail"
        reranker.compress_documents([Document(page_content="Red")], TOO_LONG)


def langchain_documents():
    from langchain_core.documents import Document

    return [Document(page_content=d, metadata={"i": i}) for i, d in enumerate(DOCUMENTS)]


def haystack_documents():
    from haystack import Document

    return [Document(content=d, id=str(i)) for i, d in enumerate(DOCUMENTS)]


def test_haystack_cohere_ranker(app, expected):
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.cohere import CohereRanker

    ranker = CohereRanker(model=MODEL, api_key=Secret.from_token("unused"), api_base_url=f"{app}/image-urls", top_k=4)
    ranked = ranker.run(query=QUERY, documents=haystack_documents())["documents"]
    check([(int(d.id), d.score) for d in ranked], expected, 4)
    with pytest.raises(Exception, match=REFUSAL):
        ranker.run(query=TOO_LONG, documents=haystack_documents())


def test_haystack_jina_ranker(app, expected):
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.jina import JinaRanker

    ranker = JinaRanker(model=MODEL, api_key=Secret.from_token("unused"), base_url=f"{app}/image-urls/v1/rerank")
    result = ranker.run(query=QUERY, documents=haystack_documents())
    check([(int(d.id), d.score) for d in result["documents"]], expected)
    assert result["meta"]["usage"]["total_tokens"] > 0
    with pytest.raises(RuntimeError, match=REFUSAL):  # it raises the body's "detail"
        ranker.run(query=TOO_LONG, documents=haystack_documents())


@pytest.mark.parametrize("provider", ["cohere", "jina_ai", "hosted_vllm"])
def test_litellm_rerank(app, expected, provider):
    import litellm

    api_base = f"{app}/image-urls" if provider == "cohere" else f"{app}/image-urls/v1"
    response = litellm.rerank(model=f"{provider}/{MODEL}", query=QUERY, documents=DOCUMENTS, top_n=3,
                              api_base=api_base, api_key="unused")
    check([(r["index"], r["relevance_score"]) for r in response.results], expected, 3)
    with pytest.raises(Exception, match=REFUSAL):
        litellm.rerank(model=f"{provider}/{MODEL}", query=TOO_LONG, documents=DOCUMENTS, api_base=api_base,
                       api_key="unused")


def test_llama_index_jina_rerank(app, expected):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    nodes = [NodeWithScore(node=TextNode(text=text, id_=str(i))) for i, text in enumerate(DOCUMENTS)]
    reranker = JinaRerank(base_url=f"{app}/image-urls/v1", api_key="unused", model=MODEL, top_n=3)
    ranked = reranker.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    check([(int(n.node.id_), n.score) for n in ranked], expected, 3)
    with pytest.raises(Exception, match=REFUSAL):
        reranker.postprocess_nodes(nodes, query_bundle=QueryBundle(TOO_LONG))


def test_rerankers_api_ranker(app, expected):
    from rerankers.models.api_rankers import APIRanker

    ranker = APIRanker(model=MODEL, api_key="unused", api_provider="jina", url=f"{app}/image-urls/v1/rerank")
    ranked = ranker.rank(QUERY, DOCUMENTS)
    check([(r.document.doc_id, r.score) for r in ranked.results], expected)
    with pytest.raises(KeyError, match="results"):  # rerankers 0.10 reads results from any answer: no message
        ranker.rank(TOO_LONG, DOCUMENTS)


def dify_rerank(request: dict) -> dict:
    """:mod:`tests.clients.dify_rerank` in a process of its own (``import dify_plugin`` patches the
    interpreter with gevent)."""
    done = subprocess.run([sys.executable, "-m", "tests.clients.dify_rerank"], input=json.dumps(request),
                          capture_output=True, text=True, timeout=180, check=True)
    return json.loads(done.stdout)


def test_dify_plugin_sdk_rerank(app, expected):
    """``OAICompatRerankModel`` posts Jina's shape to ``{endpoint_url}/rerank`` and min-max normalises the
    scores it gets back to 0-1; on a refusal it raises ``InvokeError`` with requests' status line only
    (``raise_for_status``), so the route's message does not reach Dify's user."""
    top = expected[:3]
    low, high = min(s for _, s in top), max(s for _, s in top)
    answer = dify_rerank({"endpoint_url": f"{app}/image-urls/v1", "query": QUERY, "docs": DOCUMENTS, "top_n": 3})
    assert [d["index"] for d in answer["docs"]] == [i for i, _ in top]
    assert [d["score"] for d in answer["docs"]] == pytest.approx([(s - low) / (high - low) for _, s in top],
                                                                 abs=1e-4)
    assert [d["text"] for d in answer["docs"]] == [DOCUMENTS[i] for i, _ in top]
    refused = dify_rerank({"endpoint_url": f"{app}/image-urls/v1", "query": TOO_LONG, "docs": DOCUMENTS})
    assert "400 Client Error" in refused["error"] and REFUSAL not in refused["error"]


def test_dify_vision_format(app, expected):
    """The openai_api_compatible plugin's multimodal request: a text query, vLLM content documents,
    posted to ``{endpoint_url}/rerank``; it reads ``results[].index`` and ``relevance_score``."""
    content = [{"content": [{"type": "image_url", "image_url": {"url": d}}]} if d.startswith("data:") else
               {"content": [{"type": "text", "text": d}]} for d in DOCUMENTS]
    response = httpx.post(f"{app}/v1/rerank", timeout=120, headers={"Authorization": ""},
                          json={"model": MODEL, "query": QUERY, "documents": content, "top_n": 6})
    response.raise_for_status()
    check([(r["index"], r["relevance_score"]) for r in response.json()["results"]], expected)
