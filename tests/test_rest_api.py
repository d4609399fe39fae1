"""``POST /v1/rerank`` (``/rerank``, ``/v2/rerank``) on the launched app (tiny random checkpoint): the
Jina, Cohere v2 and vLLM request shapes, the answer's shape and scores, and every refusal."""

from __future__ import annotations

import base64
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
    assert set(answer) == {"id", "model", "usage", "results", "warnings"}
    assert answer["usage"] == {"total_tokens": None} and answer["id"].startswith("rerank-")
    scores = [r["relevance_score"] for r in answer["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4
    expected = p_yes(library, QUERY, [None, pictures[0], pictures[1], pictures[2]],
                     ["A red square, 64 by 48", None, "Green", None])
    got = by_index(answer)
    for i, p in enumerate(expected):
        assert got[i]["relevance_score"] == pytest.approx(p, abs=P_TOLERANCE)
        assert got[i]["score"] == pytest.approx(10 * p, abs=1e-5)
        assert set(got[i]) == {"index", "relevance_score", "score", "tied", "error", "document"}
        assert got[i]["document"] == documents[i] and got[i]["error"] is None


def test_vllm_content_documents_and_plain_strings_score_alike(demo_url, pictures, library):
    """Dify's vision format: a text query and vLLM content documents; strings that are data: URIs are images."""
    content = [{"content": [{"type": "text", "text": "Red tile"},
                            {"type": "image_url", "image_url": {"url": data_uri(pictures[0])}}]},
               {"content": [{"type": "image_url", "image_url": {"url": data_uri(pictures[1])}}]},
               {"content": [{"type": "text", "text": "A blue square"}]}]
    strings = ["Red tile", data_uri(pictures[1]), "A blue square"]
    vllm = post(demo_url, {"query": QUERY, "documents": content, "top_n": 0}).json()
    cohere = post(demo_url, {"query": QUERY, "documents": strings}, path="/v2/rerank").json()
    expected = p_yes(library, QUERY, [pictures[0], pictures[1], None], ["Red tile", None, "A blue square"])
    assert [by_index(vllm)[i]["relevance_score"] for i in range(3)] == pytest.approx(expected, abs=P_TOLERANCE)
    assert by_index(cohere)[1]["relevance_score"] == pytest.approx(expected[1], abs=P_TOLERANCE)
    assert by_index(cohere)[2]["relevance_score"] == pytest.approx(expected[2], abs=P_TOLERANCE)
    assert by_index(cohere)[0]["document"] == {"text": "Red tile"}


def test_vllm_one_document_per_content_part_and_a_content_query(demo_url, pictures, library):
    body = {"query": {"content": [{"type": "text", "text": QUERY}]},
            "documents": {"content": [{"type": "image_url", "image_url": {"url": data_uri(p)}} for p in pictures]}}
    answer = post(demo_url, body, path="/rerank").json()
    expected = p_yes(library, QUERY, pictures, None)
    assert [by_index(answer)[i]["relevance_score"] for i in range(3)] == pytest.approx(expected, abs=P_TOLERANCE)


def test_an_image_query_and_the_extensions_apply(demo_url, pictures, library):
    body = {"query": {"image": data_uri(pictures[2]), "text": "but green"},
            "documents": [data_uri(p) for p in pictures], "instruction": "Find the same shape.", "top_n": 2,
            "return_documents": False}
    answer = post(demo_url, body).json()
    expected = p_yes(library, "but green", pictures, None, query_image=pictures[2], instruction="Find the same shape.")
    assert len(answer["results"]) == 2 and all("document" not in r for r in answer["results"])
    best = sorted(range(3), key=lambda i: -expected[i])[:2]
    assert [r["index"] for r in answer["results"]] == best
    assert [r["relevance_score"] for r in answer["results"]] == pytest.approx([expected[i] for i in best],
                                                                              abs=P_TOLERANCE)
    passing = post(demo_url, {"query": QUERY, "documents": [data_uri(p) for p in pictures], "score_threshold": 10})
    assert passing.json()["results"] == []
    precise = post(demo_url, {"query": QUERY, "documents": [data_uri(p) for p in pictures], "preset": "precise",
                              "score_threshold": 0}).json()
    assert len(precise["results"]) == 1  # the preset's top_k


def test_a_document_that_cannot_be_used_comes_last_with_its_error(demo_url, pictures):
    documents = ["http://127.0.0.1/x.png", data_uri(pictures[0]), {"content": []}, data_uri(b"not an image")]
    answer = post(demo_url, {"query": QUERY, "documents": documents}).json()
    assert [r["index"] for r in answer["results"]] == [1, 0, 2, 3]
    failed = answer["results"][1:]
    assert all(r["relevance_score"] == 0.0 and r["score"] == 0.0 and r["error"] for r in failed)
    assert "refused URL: 127.0.0.1 is not a public address" in failed[0]["error"]
    assert "no image and no text" in failed[1]["error"]


def test_cleaned_texts_come_back_as_warnings(demo_url):
    answer = post(demo_url, {"query": "a <|im_end|> cat", "documents": ["A cat <|image_pad|> asleep"]}).json()
    assert [w["code"] for w in answer["warnings"]] == ["query_control_tokens", "document_control_tokens"]


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"documents": ["a"]}, "query", "query is required"),
    ({"query": "a"}, "documents", "documents is required"),
    ({"query": "a", "documents": []}, "documents", "documents must be a non-empty list"),
    ({"query": "a", "documents": [3]}, "documents[0]", "documents[0] must be a string"),
    ({"query": "a", "documents": [{"content": [{"type": "audio"}]}]}, "documents[0].content[0]", "must be"),
    ({"query": "a", "documents": ["x"], "top_n": -1}, "top_n", "top_n must be a whole number >= 0"),
    ({"query": "a", "documents": ["x"], "top_n": True}, "top_n", "top_n must be a whole number >= 0"),
    ({"query": "a", "documents": ["x"], "return_documents": "yes"}, "return_documents", "true or false"),
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
    assert words in error["message"] and " / " in error["message"]


def test_a_body_that_is_not_json_is_a_400(demo_url):
    refused = httpx.post(demo_url + "/v1/rerank", content=b"{not json", timeout=30)
    assert refused.status_code == 400 and "not JSON" in refused.json()["error"]["message"]


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
    from lychee.web.app import build_demo, launch_options
    from lychee.web.service import ModelSlot

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
    from lychee.web.app import build_demo, launch_options
    from lychee.web.service import ModelSlot

    slot = ModelSlot(str(tmp_path / "missing"), device="cpu", dtype="fp32")
    slot.load_now()
    demo = build_demo(slot)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_options(slot.limits))
    try:
        refused = post(url.rstrip("/"), {"query": "a", "documents": ["x"]})
        assert refused.status_code == 503 and "LYCHEE_MODEL" in refused.json()["error"]["message"]
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
