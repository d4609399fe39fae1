"""Real rerank clients that nobody here wrote, pointed at the launched app's ``/v1/rerank``: Cohere's
SDK (what LangChain's ``CohereRerank`` calls), LlamaIndex's ``JinaRerank``, rerankers' ``APIRanker``,
and raw posts in Dify's vision format. Each must rank by, and report, the library's p(yes)."""

from __future__ import annotations

import base64

import httpx
import pytest

pytestmark = pytest.mark.timeout(180)

QUERY = "a red square"
P_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def documents(image_dir) -> tuple[list[str], list[bytes | None], list[str | None]]:
    """Text documents and image documents (data: URI strings), as strings a text-only client can send;
    and the same documents as the library takes them."""
    pictures = [(image_dir / f"good{i}.png").read_bytes() for i in range(2)]
    uris = ["data:image/png;base64," + base64.b64encode(p).decode() for p in pictures]
    texts = ["A red square with a stripe", "A blue circle", "Red", "绿色的方块"]
    return [*texts, *uris], [None] * len(texts) + pictures, [*texts, None, None]


@pytest.fixture(scope="module")
def library(tiny_checkpoint):
    from lychee import LycheeReranker

    return LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def expected(library, documents) -> list[float]:
    """p(yes) of each document, by the library."""
    _, images, texts = documents
    return [r.raw_score / 10 for r in library.score(QUERY, images, texts=texts)]


@pytest.fixture(scope="module")
def order(library, documents) -> list[int]:
    """The library's ranking (ties keep input order), best first."""
    _, images, texts = documents
    return [r.index for r in library.rerank(QUERY, images, texts=texts)]


def test_cohere_client_v2(demo_url, documents, expected, order):
    import cohere

    client = cohere.ClientV2(api_key="unused", base_url=demo_url)
    response = client.rerank(model="lychee-rerank-mm", query=QUERY, documents=documents[0], top_n=4)
    assert [r.index for r in response.results] == order[:4]
    assert [r.relevance_score for r in response.results] == pytest.approx(
        [expected[i] for i in order[:4]], abs=P_TOLERANCE)


def test_llama_index_jina_rerank(demo_url, documents, expected, order):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    nodes = [NodeWithScore(node=TextNode(text=text, id_=str(i))) for i, text in enumerate(documents[0])]
    reranker = JinaRerank(base_url=f"{demo_url}/v1", api_key="unused", model="lychee-rerank-mm", top_n=3)
    ranked = reranker.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    assert [int(n.node.id_) for n in ranked] == order[:3]
    assert [n.score for n in ranked] == pytest.approx([expected[i] for i in order[:3]], abs=P_TOLERANCE)


def test_rerankers_api_ranker(demo_url, documents, expected, order):
    from rerankers.models.api_rankers import APIRanker

    ranker = APIRanker(model="lychee-rerank-mm", api_key="unused", api_provider="jina", url=f"{demo_url}/v1/rerank")
    ranked = ranker.rank(QUERY, documents[0])
    assert [r.document.doc_id for r in ranked.results] == order
    assert [r.score for r in ranked.results] == pytest.approx([expected[i] for i in order], abs=P_TOLERANCE)


def test_dify_vision_format(demo_url, documents, expected, order):
    """The openai_api_compatible plugin's multimodal request: a text query, vLLM content documents,
    posted to ``{endpoint_url}/rerank``; it reads ``results[].index`` and ``relevance_score``."""
    strings, images, texts = documents
    content = [{"content": [{"type": "text", "text": text}]} if text else
               {"content": [{"type": "image_url", "image_url": {"url": uri}}]} for text, uri in zip(texts, strings)]
    response = httpx.post(f"{demo_url}/v1/rerank", timeout=120, headers={"Authorization": ""},
                          json={"model": "lychee-rerank-mm", "query": QUERY, "documents": content, "top_n": 6})
    response.raise_for_status()
    results = response.json()["results"]
    assert [r["index"] for r in results] == order
    assert {r["index"]: r["relevance_score"] for r in results} == pytest.approx(dict(enumerate(expected)),
                                                                                abs=P_TOLERANCE)
