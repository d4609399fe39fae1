"""``POST /v1/rerank`` (``/rerank``, ``/v2/rerank``) on the launched app (tiny random checkpoint): the
Jina, Cohere v2 and vLLM request shapes, the answer's shape and scores, and every refusal."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import httpx
import pytest

from .conftest import APP_MAX_IMAGES

pytestmark = pytest.mark.timeout(180)

QUERY = "a red square"
P_TOLERANCE = 1e-6  # relevance_score against the library's p(yes)
IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def pictures(image_dir) -> list[bytes]:
    return [(image_dir / f"good{i}.png").read_bytes() for i in range(3)]


@pytest.fixture(scope="module")
def library(tiny_checkpoint):
    """The library as the app loads it: the same checkpoint, device, dtype and batch size."""
    from lychee import LycheeReranker

    return LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32")


def post(url: str, body, path: str = "/v1/rerank", **kwargs) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120, **kwargs)


def p_yes(library, query: str, images, texts, **kwargs) -> list[float]:
    return [r.raw_score / 10 for r in library.score(query, images, texts=texts, **kwargs)]


def by_index(answer: dict) -> dict[int, dict]:
    return {r["index"]: r for r in answer["results"]}


def test_jina_documents_of_all_three_kinds_score_the_librarys_p_yes(demo_url, pictures, library):
    documents = [{"text": "A red square, 64 by 48"}, {"image": data_uri(pictures[0])},
                 {"text": "Green", "image": data_uri(pictures[1])},
                 {"image": base64.b64encode(pictures[2]).decode()}]  # Jina also takes bare base64
    answer = post(demo_url, {"model": "anything", "query": QUERY, "documents": documents}).json()
    assert set(answer) == {"id", "model", "usage", "results", "errors", "warnings"}
    assert answer["model"] == "anything" and answer["id"].startswith("rerank-") and answer["errors"] == []
    scores = [r["relevance_score"] for r in answer["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4
    expected = p_yes(library, QUERY, [None, pictures[0], pictures[1], pictures[2]],
                     ["A red square, 64 by 48", None, "Green", None])
    got = by_index(answer)
    for i, p in enumerate(expected):
        assert got[i]["relevance_score"] == pytest.approx(p, abs=P_TOLERANCE)
        assert got[i]["score"] == pytest.approx(10 * p, abs=1e-5)
        assert set(got[i]) == {"index", "relevance_score", "score", "tied", "error", "document"}
        assert got[i]["document"] == {**documents[i], "text": documents[i].get("text", "")} and got[i]["error"] is None


def test_usage_counts_the_models_tokens_of_texts_and_images(demo_url, pictures, tiny_checkpoint):
    from lychee.backends.tokens import token_counter

    count = token_counter(str(tiny_checkpoint)).count
    texts = post(demo_url, {"query": QUERY, "documents": ["A red square", "Blue"]}).json()["usage"]
    assert texts == {"prompt_tokens": 2 * count(QUERY) + count("A red square") + count("Blue"),
                     "total_tokens": texts["prompt_tokens"]}
    with_image = post(demo_url, {"query": QUERY, "documents": [{"image": data_uri(pictures[0])}]}).json()["usage"]
    assert with_image["prompt_tokens"] > count(QUERY)  # the image's visual tokens


def test_bare_strings_are_text_even_when_they_start_like_a_url(demo_url, library):
    text = "https://en.wikipedia.org/wiki/Paris is the article about the capital of France"
    answer = post(demo_url, {"query": "Paris", "documents": [text, "data:image/png is a media type"]}).json()
    assert answer["errors"] == [] and [r["error"] for r in answer["results"]] == [None, None]
    expected = p_yes(library, "Paris", [None, None], [text, "data:image/png is a media type"])
    assert [by_index(answer)[i]["relevance_score"] for i in range(2)] == pytest.approx(expected, abs=P_TOLERANCE)
    assert by_index(answer)[0]["document"] == {"text": text}


def test_under_image_urls_strings_that_are_image_urls_are_images(demo_url, pictures, library):
    """For clients that can only send strings (Cohere's): ``/image-urls/v2/rerank`` and its siblings."""
    strings = ["Red tile", data_uri(pictures[1])]
    for path in ("/image-urls/v2/rerank", "/image-urls/v1/rerank", "/image-urls/rerank"):
        answer = post(demo_url, {"query": QUERY, "documents": strings}, path=path).json()
        expected = p_yes(library, QUERY, [None, pictures[1]], ["Red tile", None])
        assert [by_index(answer)[i]["relevance_score"] for i in range(2)] == pytest.approx(expected, abs=P_TOLERANCE)
        assert by_index(answer)[1]["document"] == {"text": strings[1]}


def test_vllm_content_documents_score_alike_and_echo_as_multi_modal(demo_url, pictures, library):
    """Dify's vision format: a text query and vLLM content documents, text and image in one document."""
    content = [{"content": [{"type": "text", "text": "Red tile"},
                            {"type": "image_url", "image_url": {"url": data_uri(pictures[0])}}]},
               {"content": [{"type": "image_url", "image_url": {"url": data_uri(pictures[1])}}]},
               {"content": [{"type": "text", "text": "A blue square"}]}]
    answer = post(demo_url, {"query": QUERY, "documents": content, "top_n": 0}).json()
    expected = p_yes(library, QUERY, [pictures[0], pictures[1], None], ["Red tile", None, "A blue square"])
    assert [by_index(answer)[i]["relevance_score"] for i in range(3)] == pytest.approx(expected, abs=P_TOLERANCE)
    assert [by_index(answer)[i]["document"] for i in range(3)] == [{"multi_modal": c["content"]} for c in content]


def test_vllm_one_content_object_or_one_string_is_one_document(demo_url, pictures, library):
    """vLLM 0.32: ``"documents": {"content": [text, image]}`` is one document, as is a bare string."""
    parts = [{"type": "text", "text": "Red tile"}, {"type": "image_url", "image_url": {"url": data_uri(pictures[0])}}]
    one = post(demo_url, {"query": {"content": [{"type": "text", "text": QUERY}]},
                          "documents": {"content": parts}}, path="/rerank").json()
    assert len(one["results"]) == 1 and one["results"][0]["document"] == {"multi_modal": parts}
    assert one["results"][0]["relevance_score"] == pytest.approx(
        p_yes(library, QUERY, [pictures[0]], ["Red tile"])[0], abs=P_TOLERANCE)
    string = post(demo_url, {"query": QUERY, "documents": "Red tile"}).json()
    assert [r["index"] for r in string["results"]] == [0]


def test_an_image_query_and_the_extensions_apply(demo_url, pictures, library):
    body = {"query": {"image": data_uri(pictures[2]), "text": "but green"},
            "documents": [{"image": data_uri(p)} for p in pictures], "instruction": "Find the same shape.",
            "top_n": 2, "return_documents": False}
    answer = post(demo_url, body).json()
    expected = p_yes(library, "but green", pictures, None, query_image=pictures[2], instruction="Find the same shape.")
    assert len(answer["results"]) == 2 and all("document" not in r for r in answer["results"])
    best = sorted(range(3), key=lambda i: -expected[i])[:2]
    assert [r["index"] for r in answer["results"]] == best
    assert [r["relevance_score"] for r in answer["results"]] == pytest.approx([expected[i] for i in best],
                                                                              abs=P_TOLERANCE)
    images = [{"image": data_uri(p)} for p in pictures]
    passing = post(demo_url, {"query": QUERY, "documents": images, "score_threshold": 10})
    assert passing.json()["results"] == []
    precise = post(demo_url, {"query": QUERY, "documents": images, "preset": "precise", "score_threshold": 0}).json()
    assert len(precise["results"]) == 1  # the preset's top_k


TIED = [f"Red square number {i}" for i in range(6)]  # the tiny model scores these within the tie epsilon


def test_results_are_in_strict_score_order_and_top_n_takes_the_best(demo_url, library):
    """Every peer sorts by score: the tie rule (0.05 on 0-10) marks ``tied`` but never reorders."""
    expected = p_yes(library, QUERY, [None] * len(TIED), TIED)
    answer = post(demo_url, {"query": QUERY, "documents": TIED}).json()
    assert any(r["tied"] for r in answer["results"]), "the sample must hold a tie for this test to mean anything"
    assert [r["index"] for r in answer["results"]] == sorted(range(len(TIED)), key=lambda i: (-expected[i], i))
    best = post(demo_url, {"query": QUERY, "documents": TIED, "top_n": 1}).json()["results"]
    assert [r["index"] for r in best] == [max(range(len(TIED)), key=lambda i: expected[i])]


def test_tie_epsilon_in_the_body_sets_the_tie_marks(demo_url):
    answer = post(demo_url, {"query": QUERY, "documents": TIED, "tie_epsilon": 0}).json()
    assert not any(r["tied"] for r in answer["results"])
    assert post(demo_url, {"query": QUERY, "documents": TIED, "tie_epsilon": 11}).status_code == 400


def test_a_document_that_cannot_be_used_follows_the_ranked_ones_and_is_listed_in_errors(demo_url, pictures):
    documents = [{"image": "http://127.0.0.1/x.png"}, {"image": data_uri(pictures[0])}, {"content": []},
                 {"image": data_uri(b"not an image")}]
    answer = post(demo_url, {"query": QUERY, "documents": documents}).json()
    assert [r["index"] for r in answer["results"]] == [1, 0, 2, 3]
    failed = answer["results"][1:]
    assert all(r["relevance_score"] == 0.0 and r["score"] == 0.0 and r["error"] for r in failed)
    assert "refused URL: 127.0.0.1 is not a public address" in failed[0]["error"]
    assert "no image and no text" in failed[1]["error"]
    assert answer["errors"] == [{"index": r["index"], "error": r["error"]} for r in failed]


def test_top_n_returns_at_most_n_results_the_failures_beyond_in_errors(demo_url, pictures):
    documents = [{"image": "http://127.0.0.1/x.png"}, "Red", "Blue", {"image": data_uri(pictures[0])}]
    answer = post(demo_url, {"query": QUERY, "documents": documents, "top_n": 2}).json()
    assert len(answer["results"]) == 2 and all(r["error"] is None for r in answer["results"])
    assert [e["index"] for e in answer["errors"]] == [0]


def test_use_activation_false_gives_the_logit_whose_sigmoid_is_p_yes(demo_url):
    body = {"query": QUERY, "documents": TIED[:3]}
    p = {r["index"]: r["relevance_score"] for r in post(demo_url, body).json()["results"]}
    raw = post(demo_url, {**body, "use_activation": False}).json()
    logits = {r["index"]: r["relevance_score"] for r in raw["results"]}
    assert {i: 1 / (1 + math.exp(-z)) for i, z in logits.items()} == pytest.approx(p, abs=1e-9)
    assert logits != pytest.approx(p, abs=1e-2)


def test_max_tokens_per_doc_cuts_each_text_to_that_many_tokens(demo_url, library, tiny_checkpoint):
    from lychee.backends.tokens import token_counter

    long = "The capital of France is Paris. " * 10
    cut = token_counter(str(tiny_checkpoint)).truncate(long, 5)
    assert cut != long
    whole = post(demo_url, {"query": QUERY, "documents": [long]}).json()
    limited = post(demo_url, {"query": QUERY, "documents": [long], "max_tokens_per_doc": 5}).json()
    assert limited["usage"]["prompt_tokens"] < whole["usage"]["prompt_tokens"]
    assert limited["results"][0]["relevance_score"] == pytest.approx(p_yes(library, QUERY, [None], [cut])[0],
                                                                     abs=P_TOLERANCE)
    prompt = post(demo_url, {"query": QUERY, "documents": [long], "truncate_prompt_tokens": 20}).json()
    assert prompt["usage"]["prompt_tokens"] <= 20 < whole["usage"]["prompt_tokens"]


def test_a_query_over_the_limit_is_a_400_unless_max_tokens_per_query_cuts_it(demo_url):
    from lychee.limits import Limits

    query = "What is the capital of France? " * (Limits().max_query_chars // 20)
    refused = post(demo_url, {"query": query, "documents": ["Paris"]})
    assert refused.status_code == 400 and "LYCHEE_MAX_QUERY_CHARS" in refused.json()["error"]["message"]
    assert post(demo_url, {"query": query, "documents": ["Paris"], "max_tokens_per_query": 20}).status_code == 200


def test_invocations_answers_as_rerank_does(demo_url):
    body = {"query": QUERY, "documents": ["Red", "Blue"]}
    rerank, invocations = post(demo_url, body, path="/rerank").json(), post(demo_url, body, path="/invocations").json()
    assert rerank.keys() == invocations.keys() and rerank["results"] == invocations["results"]


def test_cleaned_texts_come_back_as_warnings(demo_url):
    answer = post(demo_url, {"query": "a <|im_end|> cat", "documents": ["A cat <|image_pad|> asleep"]}).json()
    assert [w["code"] for w in answer["warnings"]] == ["query_control_tokens", "document_control_tokens"]


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"documents": ["a"]}, "query", "query is required"),
    ({"query": "a"}, "documents", "documents is required"),
    ({"query": "a", "documents": []}, "documents", "documents must be a non-empty list"),
    ({"query": "a", "documents": [3]}, "documents[0]", "documents[0] must be a string"),
    ({"query": "a", "documents": [{"type": "text", "text": "a"}]}, "documents[0]", "must be a string"),
    ({"query": "a", "documents": [{"content": [{"type": "audio"}]}]}, "documents[0].content[0]", "must be"),
    ({"query": "a", "documents": ["x"], "top_n": -1}, "top_n", "top_n must be a whole number >= 0"),
    ({"query": "a", "documents": ["x"], "top_n": True}, "top_n", "top_n must be a whole number >= 0"),
    ({"query": "a", "documents": ["x"], "max_tokens_per_doc": -5}, "max_tokens_per_doc", "whole number >= 0"),
    ({"query": "a", "documents": ["x"], "max_tokens_per_query": 1.5}, "max_tokens_per_query", "whole number"),
    ({"query": "a", "documents": ["x"], "truncate_prompt_tokens": -2}, "truncate_prompt_tokens", ">= -1"),
    ({"query": "a b c d", "documents": ["x"], "truncate_prompt_tokens": 1}, "truncate_prompt_tokens", "no room"),
    ({"query": "a", "documents": ["x"], "use_activation": "no"}, "use_activation", "true or false"),
    ({"query": "a", "documents": ["x"], "return_documents": "yes"}, "return_documents", "true or false"),
    ({"query": "a", "documents": ["x"], "model": 7}, "model", "model must be text"),
    ({"query": "a", "documents": ["x"], "score_threshold": 11}, "score_threshold", "score_threshold must be"),
    ({"query": "a", "documents": ["x"], "preset": "fast"}, "preset", "fast"),
    ({"query": "  ", "documents": ["x"]}, "query", "empty"),
    ({"query": "a", "documents": [{"content": [IMAGE_PART, IMAGE_PART]}]}, "documents[0].content", "at most one"),
])
def test_a_bad_field_is_a_400_naming_it_in_both_languages(demo_url, body, param, words):
    refused = post(demo_url, body)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == param and error["code"] == 400
    english, chinese = error["message"].split(" / ", 1)
    assert words in english and refused.json()["detail"] == error["message"]
    prose = re.sub(r"\{.*\}|收到.*", "", chinese)  # leave out JSON shapes and the value sent
    assert not re.search(r"\b(must|whole|number|text|got|or)\b", prose), chinese  # no English in zh


def test_a_body_that_is_not_json_is_a_400(demo_url):
    refused = httpx.post(demo_url + "/v1/rerank", content=b"{not json", timeout=30)
    assert refused.status_code == 400 and "not JSON" in refused.json()["error"]["message"]
    assert refused.json()["detail"] == refused.json()["error"]["message"]


def test_too_many_documents_and_too_large_a_body_are_413(demo_url):
    many = post(demo_url, {"query": "a", "documents": ["x"] * (APP_MAX_IMAGES + 1)})
    assert many.status_code == 413 and "LYCHEE_MAX_IMAGES" in many.json()["error"]["message"]
    import socket

    host, port = httpx.URL(demo_url).host, httpx.URL(demo_url).port
    with socket.create_connection((host, port), timeout=30) as connection:  # a length no client library would send
        connection.sendall(f"POST /v1/rerank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {10**12}\r\n\r\n{{}}".encode())
        answer = b"".join(iter(lambda: connection.recv(65536), b"")).decode()  # until the server closes
    assert answer.startswith("HTTP/1.1 413") and "LYCHEE_MAX_REQUEST_BYTES" in answer
    error = json.loads(answer.partition("\r\n\r\n")[2])
    assert error["error"]["code"] == 413 and error["detail"] == error["error"]["message"]


def test_a_configured_key_is_required_as_a_bearer_token(demo_url, monkeypatch):
    monkeypatch.setenv("LYCHEE_API_KEY", "s3cret")
    body = {"query": "a", "documents": ["x"]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        refused = post(demo_url, body, headers=headers)
        assert refused.status_code == 401 and "LYCHEE_API_KEY" in refused.json()["error"]["message"]
    assert post(demo_url, body, headers={"Authorization": "Bearer s3cret"}).status_code == 200


@pytest.fixture(scope="module")
def gated_app(tiny_checkpoint):
    """An app whose scoring waits for a gate, with room for one waiting request."""
    import threading

    from benchmarks.load_test import free_port
    from lychee.limits import Limits
    from lychee.web.app import build_demo
    from lychee.web.model_slot import ModelSlot
    from lychee.web.server import launch_options

    slot = ModelSlot(str(tiny_checkpoint), device="cpu", dtype="fp32", limits=Limits(queue_size=1, concurrency=1))
    slot.load_now()
    gate = threading.Event()
    score = slot.score
    slot.score = lambda job, **kwargs: gate.wait(60) and score(job, **kwargs)
    demo = build_demo(slot)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_options(slot.limits))
    yield url.rstrip("/"), gate
    gate.set()
    demo.close()


def test_a_full_queue_is_a_429_and_the_waiting_requests_still_finish(gated_app):
    from concurrent.futures import ThreadPoolExecutor

    url, gate = gated_app
    body = {"query": "a", "documents": ["x", "y"]}
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, url, body)
        _wait_until(lambda: _queue_length(url) == 0 and not running.done(), url)
        waiting = pool.submit(post, url, body)
        _wait_until(lambda: _queue_length(url) == 1, url)
        refused = post(url, body)
        gate.set()
        assert refused.status_code == 429 and "LYCHEE_QUEUE_SIZE" in refused.json()["error"]["message"]
        assert running.result().status_code == 200 and waiting.result().status_code == 200


def _queue_length(url: str) -> int:
    return httpx.get(url + "/gradio_api/queue/status", timeout=10).json()["queue_size"]


def _wait_until(condition, url: str) -> None:
    import time

    for _ in range(200):
        if condition():
            time.sleep(0.3)  # the first request leaves the queue for its worker
            return
        time.sleep(0.05)
    raise AssertionError("the queue never reached the expected state")


def test_a_model_that_did_not_load_is_a_503(tmp_path):
    from benchmarks.load_test import free_port
    from lychee.web.app import build_demo
    from lychee.web.model_slot import ModelSlot
    from lychee.web.server import launch_options

    slot = ModelSlot(str(tmp_path / "missing"), device="cpu", dtype="fp32")
    slot.load_now()
    demo = build_demo(slot)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_options(slot.limits))
    try:
        refused = post(url.rstrip("/"), {"query": "a", "documents": ["x"]})
        message = refused.json()["error"]["message"]
        assert refused.status_code == 503 and "LYCHEE_MODEL" in message and "the model 'missing' could" in message
    finally:
        demo.close()


def test_python_app_py_serves_the_route_beside_the_page(demo_url):
    assert httpx.get(demo_url + "/", timeout=30).status_code == 200
    assert post(demo_url, {"query": "a", "documents": ["x"]}).status_code == 200
    assert Path(__file__).resolve().parent.parent.joinpath("app.py").read_text().count("main()") == 1


def test_the_scoring_event_sees_the_callers_headers_as_spaces_reads_them(demo_url, monkeypatch):
    """On a ZeroGPU Space, ``spaces.GPU`` takes the caller's quota token (``X-IP-Token``, added by Hugging
    Face's proxy) from the Gradio request of the event it runs in (``spaces.utils.gradio_request_var``):
    the route's scoring event must carry the route's own request."""
    from spaces.utils import gradio_request_var

    from lychee.web import rest_routes

    seen = []
    rerank = rest_routes.rerank
    monkeypatch.setattr(rest_routes, "rerank", lambda job, slot, **kwargs: (
        seen.append(gradio_request_var().get(None).headers.get("x-ip-token")) or rerank(job, slot, **kwargs)))
    assert post(demo_url, {"query": "a", "documents": ["x"]}, headers={"X-IP-Token": "caller-token"}).status_code == 200
    assert seen == ["caller-token"]
