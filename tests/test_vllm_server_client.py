"""The vllm-server backend's client side against a stand-in server on 127.0.0.1: what it sends,
and how a refused pair, a server that is down or goes away, and a wrong model name end.
The real vLLM server is tested in tests/vllm (``make test-vllm``)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jinja2
import pytest
from PIL import Image

from benchmarks.load_test import free_port
from lychee import LycheeReranker, protocol
from lychee.backends.vllm_server import ServerUnavailable, serve_command
from lychee.images import budget_size
from lychee.messages import UserError
from lychee.web.model_slot import ModelSlot

from .conftest import make_image

FAILING_WIDTH = 140  # the stand-in refuses images this wide


class StandIn(BaseHTTPRequestHandler):
    """/v1/models and /classify like vLLM's; p(yes) = width / 1000."""

    bodies: list[dict] = []

    def log_message(self, *_):  # keep pytest's output clean
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._answer(200, {"data": [{"id": "stub-model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StandIn.bodies.append(body)
        uri = body["messages"][1]["content"][-1]["image_url"]["url"]
        width = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).width
        if width == FAILING_WIDTH:
            self._answer(500, {"error": {"message": "engine hiccup"}})
        else:
            self._answer(200, {"data": [{"index": 0, "probs": [width / 1000], "num_classes": 1}]})


@pytest.fixture()
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StandIn.bodies = []
    yield server
    server.shutdown()
    server.server_close()


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def images(*widths: int) -> list[bytes]:
    """Images already at their pixel budget's size (multiples of 28), so they travel at their own width."""
    return [make_image(width, 56, (10 * i, 90, 200)) for i, width in enumerate(widths)]


def sent_images(body: dict) -> list[Image.Image]:
    parts = [p for m in body["messages"] for p in m["content"] if p.get("type") == "image_url"]
    return [Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))) for p in parts]


def test_each_pair_is_one_classify_request_with_the_lychee_prompt(stand_in):
    reranker = LycheeReranker(backend="vllm-server", server_url=url_of(stand_in), max_pixels=64 * 28 * 28)
    records = reranker.score("a red car", images(112, 224), instruction="Find the car.")
    assert [r.raw_score for r in records] == pytest.approx([1.12, 2.24])
    assert reranker.describe()["backend"] == "vllm-server" and reranker.model_id == "stub-model"
    body = StandIn.bodies[0]
    assert body["model"] == "stub-model" and body["add_generation_prompt"] is True
    texts = [part.get("text") for part in body["messages"][1]["content"]]
    assert texts[:3] == ["<Instruct>: Find the car.", "<Query>:", "a red car"]
    assert body["messages"][0]["content"][0]["text"] == protocol.SYSTEM_PROMPT
    assert body["messages"][1]["content"][-1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_the_model_cards_pixel_budget_is_the_servers_and_another_travels_with_each_request(stand_in):
    LycheeReranker(backend="vllm-server", server_url=url_of(stand_in)).score("a red car", images(112))
    LycheeReranker(backend="vllm-server", server_url=url_of(stand_in), max_pixels=64 * 28 * 28).score(
        "a red car", images(112))
    assert "mm_processor_kwargs" not in StandIn.bodies[0]  # vllm-serve started the server with it
    assert StandIn.bodies[1]["mm_processor_kwargs"] == {"min_pixels": protocol.MIN_PIXELS, "max_pixels": 64 * 28 * 28}


@pytest.mark.parametrize("max_pixels", [protocol.MAX_PIXELS, 64 * 28 * 28])
def test_images_travel_at_the_size_of_the_pixel_budget_not_larger(stand_in, max_pixels):
    """A 1920x1080 photo and a query image go out already at the size the server's processor
    would resize them to (1316x728 under the model card's budget), so the server resizes nothing."""
    reranker = LycheeReranker(backend="vllm-server", server_url=url_of(stand_in), max_pixels=max_pixels)
    photo = Image.new("RGB", (1920, 1080), (200, 30, 30))
    reranker.score(None, [photo, make_image(300, 900, (1, 2, 3))], query_image=make_image(640, 480, (4, 5, 6)))
    budget = (protocol.MIN_PIXELS, max_pixels)
    expected = [budget_size(640, 480, budget), budget_size(1920, 1080, budget), budget_size(300, 900, budget)]
    sent = sorted((tuple(image.size for image in sent_images(body)) for body in StandIn.bodies), key=lambda s: s[1])
    assert sent == sorted([(expected[0], expected[1]), (expected[0], expected[2])], key=lambda s: s[1])
    if max_pixels == protocol.MAX_PIXELS:
        assert expected[1] == (1316, 728)


def test_a_refused_pair_becomes_that_images_error_and_the_others_are_scored(stand_in):
    reranker = LycheeReranker(backend="vllm-server", server_url=url_of(stand_in))
    results = reranker.rerank("a red car", images(112, FAILING_WIDTH, 336))
    assert [(r.index, r.error is None) for r in results] == [(2, True), (0, True), (1, False)]
    assert results[2].error == "model error: the vLLM server answered 500: engine hiccup"


def test_a_server_that_is_down_is_a_clear_request_error_at_once():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match=rf"no vLLM server answers at {url}.*lychee vllm-serve"):
        LycheeReranker(backend="vllm-server", server_url=url)
    assert time.monotonic() - started < 15


def test_a_server_that_goes_away_fails_the_request_not_the_images(stand_in):
    reranker = LycheeReranker(backend="vllm-server", server_url=url_of(stand_in))
    stand_in.shutdown()
    stand_in.server_close()
    with pytest.raises(ServerUnavailable, match="no vLLM server answers"):
        reranker.score("a red car", images(112, 224))


def test_the_web_app_waits_for_a_server_that_starts_after_it():
    port = free_port()
    slot = ModelSlot(backend="vllm-server", server_url=f"http://127.0.0.1:{port}")
    with pytest.raises(UserError, match="no vLLM server answers"):
        slot.get()
    assert "lychee vllm-serve" in slot.status_line("en") and "vllm-serve" in slot.status_line("zh")
    server = ThreadingHTTPServer(("127.0.0.1", port), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert slot.get().model_id == "stub-model"
        assert "backend vllm-server" in slot.status_line("en")
    finally:
        server.shutdown()
        server.server_close()


def test_a_model_the_server_does_not_serve_is_refused_by_name(stand_in):
    with pytest.raises(ValueError, match="serves stub-model, not 'other'"):
        LycheeReranker("other", backend="vllm-server", server_url=url_of(stand_in))


def test_generate_mode_needs_the_transformers_backend():
    with pytest.raises(ValueError, match="mode='generate' needs the transformers backend"):
        LycheeReranker(backend="vllm-server", mode="generate")


def test_the_serve_command_sets_every_flag_and_passes_the_rest_through(tiny_checkpoint):
    extra = ["--port", "9000", "--runner=pooling", "--data-parallel-size", "2"]
    command = serve_command(str(tiny_checkpoint), extra)
    assert command[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_checkpoint)]
    assert command[-5:] == extra
    flags = dict(zip(command[5:-5:2], command[6:-5:2]))
    assert json.loads(flags["--hf-overrides"]) == protocol.VLLM_HF_OVERRIDES
    assert json.loads(flags["--mm-processor-kwargs"]) == {"min_pixels": 4 * 28 * 28, "max_pixels": 1280 * 28 * 28}
    assert "--runner" not in flags  # given by the caller, whose value wins
    template = Path(flags["--chat-template"]).read_text(encoding="utf-8")
    assert template == protocol.score_template(protocol.QWEN2_VL_CHAT_TEMPLATE)


def test_the_score_template_renders_the_transformers_prompt(tiny_reranker):
    """vLLM's /v1/rerank and /score see the same prompt as every backend, instruction included."""
    template = jinja2.Environment().from_string(protocol.score_template(protocol.QWEN2_VL_CHAT_TEMPLATE))
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    pair = [{"role": "query", "content": "一只black cat"}, {"role": "document", "content": image}]
    render = tiny_reranker.backend.engine.render
    assert template.render(messages=pair) == render(protocol.rerank_messages("一只black cat"))
    assert template.render(messages=pair, instruction="Find it.") == render(
        protocol.rerank_messages("一只black cat", "Find it."))
