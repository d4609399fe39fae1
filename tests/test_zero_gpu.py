"""The Space on ZeroGPU, through the ``spaces`` package's own emulation of it, and the GPU-only code
paths (dtype, free memory, flash attention) with stubs where a real GPU would be needed.

``SPACES_ZERO_GPU=true`` makes ``spaces`` emulate ZeroGPU: CUDA is faked in the main thread and
real CUDA, reached anywhere, raises. It reports start-up to a device API, here a stand-in on
127.0.0.1 that also records what each GPU call asks to be scheduled for and answers that no GPU
is free (``spaces``' worker cannot run without a real GPU).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import torch

from benchmarks.load_test import free_port, serve_app
from lychee import zero_gpu
from lychee.backends import transformers as backend
from lychee.backends.transformers import Engine, TransformersBackend, free_cuda_bytes, pick_attention, resolve_dtype
from lychee.protocol import rerank_messages
from lychee.web import explaining

from .test_url_images import data_uri

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parent.parent


class DeviceAPI(ThreadingHTTPServer):
    """A stand-in for ZeroGPU's device API: start-up reports are accepted, schedules recorded and refused."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N805 - the server is ``self`` here
                url = urlsplit(handler.path)
                self.calls.append((url.path, {k: v[0] for k, v in parse_qs(url.query).items()}))
                handler.send_response(200 if url.path == "/startup-report" else 503)  # 503: no GPU free
                handler.end_headers()

            def log_message(handler, *_: object) -> None:  # noqa: N805
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)

    def paths(self, path: str) -> list[dict[str, str]]:
        return [params for seen, params in self.calls if seen == path]


@pytest.fixture
def device_api() -> Iterator[DeviceAPI]:
    server = DeviceAPI()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def zero_gpu_env(device_api: DeviceAPI, tmp_path: Path) -> dict[str, str]:
    """What Hugging Face sets on a ZeroGPU Space, pointed at the stand-in; device and dtype left to the app."""
    return {"SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": f"http://127.0.0.1:{device_api.server_port}",
            "ZEROGPU_OFFLOAD_DIR": str(tmp_path / "offload"), "LYCHEE_DEVICE": "", "LYCHEE_DTYPE": ""}


def model_line(url: str) -> str:
    import httpx

    config = httpx.get(f"{url}/config", timeout=10).json()
    (line,) = [c["props"]["value"] for c in config["components"]
               if "lychee-model-status" in (c["props"].get("elem_classes") or [])]
    return line


def test_the_space_starts_on_emulated_zero_gpu_with_the_model_on_cuda_in_bf16(tiny_checkpoint, device_api, tmp_path,
                                                                              image_dir):
    from gradio_client import Client

    images = [data_uri((image_dir / f"good{i}.png").read_bytes()) for i in range(6)]
    env = zero_gpu_env(device_api, tmp_path) | {"LYCHEE_GPU_MAX_SECONDS": "22"}
    with serve_app(tiny_checkpoint, queue_size=4, environ=env, log_path=tmp_path / "app.log") as server:
        line = model_line(server.url)
        assert "cuda:0" in line and "bf16" in line and "❌" not in line, (tmp_path / "app.log").read_text()
        assert device_api.paths("/startup-report"), "the app never reported its start-up to the device API"
        client = Client(server.url, verbose=False)
        for count in (1, 3):  # the GPU call is scheduled with the duration lychee asks for: 20 s + 0.5 s per image
            with pytest.raises(Exception, match="No GPU was available"):
                client.predict("a cat", images[:count], api_name="/rerank_urls")
        # ceil(20 s + 0.24 MB of tiny weights at 1 GB/s + 0.5 s per image): 21 s and 22 s.
        asked = [int(params["durationSeconds"]) for params in device_api.paths("/schedule")]
        assert asked == [21, 22]
        with pytest.raises(Exception, match="LYCHEE_GPU_MAX_SECONDS") as refused:
            client.predict("a cat", images, api_name="/rerank_urls")  # 6 images: 24 s, more than 22
        assert "ZeroGPU" in str(refused.value) and "GPU" in str(refused.value)
        assert len(device_api.paths("/schedule")) == 2, "a request over the limit must not be scheduled"


def test_scoring_under_emulated_zero_gpu_matches_the_cpu_and_errors_keep_both_languages(tiny_checkpoint, device_api,
                                                                                       tmp_path, image_dir):
    images = [str(image_dir / f"good{i}.png") for i in range(4)]
    env = {**os.environ, **zero_gpu_env(device_api, tmp_path), "LYCHEE_MODEL": str(tiny_checkpoint),
           "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "zero_gpu_scoring.py"), *images], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert (seen["device"], seen["parameter_device"], seen["dtype"]) == ("cuda:0", "cuda:0", "bf16")
    assert "cuda:0" in seen["status"] and "bf16" in seen["status"]

    from lychee import LycheeReranker

    cpu = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="bf16")
    for key, query, kwargs, candidates in [
            ("text_query", "a red square on a white background", {}, images),
            ("second_query", "一只黑猫 on a sofa", {}, images),
            ("image_query", "", {"query_image": images[0]}, images[1:])]:
        expected = [r.raw_score for r in cpu.score(query, candidates, **kwargs)]
        assert seen[key] == pytest.approx(expected, abs=0.05), key
    # Only the first query ran the vision tower: the second query and the image query (whose reference is
    # one of the candidates) found every image in the vision cache.
    # The explanation ran the tower once more, for its image's covered copies (one call per batch of copies).
    assert seen["vision_tower_calls"][0] == 4 and len(seen["vision_tower_calls"]) >= 2
    assert seen["gpu_functions"] == 1, "scoring and explaining must share one GPU function (one warm worker)"
    expected_map = cpu.explain("a red square", images[1])
    assert seen["explanation"]["grid"] == list(expected_map.grid)
    assert seen["explanation"]["passes"] == expected_map.forward_passes <= explaining.DEFAULT_CELLS[2] + 1
    assert seen["explanation"]["score"] == pytest.approx(expected_map.score, abs=0.05)
    assert (seen["crossed_error"]["gradio_error"], seen["crossed_error"]["key"]) == ("GpuUserError",
                                                                                     "model_unavailable")
    english, chinese = seen["crossed_error"]["message"].split(" / ", 1)
    assert "could not be loaded" in english and "无法加载" in chinese


def test_explanations_are_scheduled_for_the_passes_of_the_default_grid_and_refused_in_passes(
        tiny_checkpoint, device_api, tmp_path, image_dir):
    from gradio_client import Client

    image = data_uri((image_dir / "good0.png").read_bytes())
    env = zero_gpu_env(device_api, tmp_path) | {"LYCHEE_GPU_MAX_SECONDS": "40"}
    with serve_app(tiny_checkpoint, queue_size=4, environ=env, log_path=tmp_path / "app.log") as server:
        client = Client(server.url, verbose=False)
        with pytest.raises(Exception, match="No GPU was available"):
            client.predict("a cat", image, api_name="/explain_url")
        # The default grid's most cells (36) and the image: ceil(20 s + 0.24 MB at 1 GB/s + 37 x 0.5 s) = 39 s.
        assert [int(p["durationSeconds"]) for p in device_api.paths("/schedule")] == [39]
        with pytest.raises(Exception, match="forward passes") as refused:
            client.predict("a cat", image, grid="7", api_name="/explain_url")  # 50 passes: 46 s, more than 40
        assert "50 forward passes" in str(refused.value) and "images" not in str(refused.value)
        assert len(device_api.paths("/schedule")) == 1, "an explanation over the limit must not be scheduled"


def test_the_work_inside_a_zero_gpu_call_stops_before_its_reservation_ends():
    weights = 16_600_000_000
    for passes in (1, 16, 100, 500):
        reserved = zero_gpu.gpu_seconds(passes, weights)
        work = zero_gpu.work_seconds(reserved, weights)
        # A fresh worker first moves the weights (16.6 s at 1 GB/s); the work's deadline leaves that and a margin.
        assert 0 < work < reserved - weights / zero_gpu.WEIGHT_BYTES_PER_S
        assert work >= zero_gpu.PER_IMAGE_S * passes  # ... and still the time planned for every pass
    assert zero_gpu.work_seconds(1, weights) == 1


def test_a_job_past_its_gpu_deadline_gets_the_reservation_timeout_in_both_languages(tiny_checkpoint, image_dir):
    from lychee.messages import UserError
    from lychee.web.model_slot import ModelSlot
    from lychee.web.service import Form, accept

    slot = ModelSlot(str(tiny_checkpoint), device="cpu", dtype="fp32")
    job = accept(Form(query="a cat"), [str(image_dir / f"good{i}.png") for i in range(3)], slot.limits)
    with pytest.raises(UserError) as stopped:
        slot.score(job, seconds=0)
    assert stopped.value.key == "gpu_timeout"
    assert "reserved" in stopped.value.text("en") and "预留" in stopped.value.text("zh")


# -- GPU-only code paths, with stubs ------------------------------------------------------------------

@pytest.mark.parametrize(("capability", "expected"), [((7, 5), torch.float32), ((7, 0), torch.float32),
                                                       ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_dtype_follows_compute_capability_not_emulated_bf16_support(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # true on a T4 too, emulated
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_dtype("auto", torch.device("cuda")) == expected
    assert resolve_dtype("fp32", torch.device("cuda")) == torch.float32


def test_fp16_is_never_chosen_by_auto_and_warns_when_asked_for(caplog):
    assert resolve_dtype("auto", torch.device("mps")) == torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with caplog.at_level("WARNING"):
        assert resolve_dtype("fp16", torch.device("cpu")) == torch.float16
    assert "overflow" in caplog.text and "bf16" in caplog.text


def test_free_memory_counts_what_pytorch_keeps_cached_from_the_last_request(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * gib, 24 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 18 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 16 * gib + gib // 2)
    assert free_cuda_bytes(torch.device("cuda")) == 2 * gib + 18 * gib - (16 * gib + gib // 2)


def test_the_batch_budget_on_cuda_does_not_shrink_after_the_first_request(tiny_reranker, monkeypatch):
    engine = tiny_reranker.backend.engine
    gib = 2**30
    cached = {"reserved": 0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * gib - cached["reserved"], 24 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 16 * gib + cached["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 16 * gib)  # the weights
    cuda_engine = dataclasses.replace(engine, device=torch.device("cuda"))
    before = cuda_engine.budget()
    cached["reserved"] = 6 * gib  # the allocator kept 6 GiB of the first request's activations
    assert cuda_engine.budget() == before and before.tokens > 1


def test_flash_attention_is_chosen_by_transformers_own_check(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(backend, "is_flash_attn_2_available", lambda: False)  # e.g. flash_attn 2.1 installed
    assert pick_attention(cuda, torch.bfloat16) == "sdpa"
    monkeypatch.setattr(backend, "is_flash_attn_2_available", lambda: True)
    assert pick_attention(cuda, torch.bfloat16) == "flash_attention_2"
    assert pick_attention(cuda, torch.float32) == "sdpa"
    assert pick_attention(torch.device("cpu"), torch.bfloat16) == "sdpa"


@pytest.fixture
def flash_that_fails(tiny_checkpoint, monkeypatch):
    """A backend whose model was loaded with flash attention that raises on the first batch (a GPU its
    kernels were not built for): a real model whose attention switch is recorded."""
    engine = Engine.load(str(tiny_checkpoint), device="cpu", dtype="fp32", vision_cache_bytes=0)
    engine.attention = "flash_attention_2"
    switches: list[str] = []
    language_model = engine.model.model.forward

    def forward(*args, **kwargs):
        if not switches or switches[-1] != "sdpa":
            raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.")
        return language_model(*args, **kwargs)

    monkeypatch.setattr(engine.model.model, "forward", forward)
    monkeypatch.setattr(engine.model, "set_attn_implementation", switches.append)
    return TransformersBackend(engine), switches


def test_flash_attention_that_fails_on_the_first_batch_falls_back_to_sdpa(flash_that_fails, tiny_reranker,
                                                                         image_dir, caplog):
    from PIL import Image

    fallback, switches = flash_that_fails
    images = [Image.open(image_dir / f"good{i}.png").convert("RGB") for i in range(3)]
    messages = rerank_messages("a cat", None)
    scores = fallback.relevance(messages, images)
    assert switches == ["sdpa"] and fallback.describe()["attention"] == "sdpa"
    assert "flash_attention_2 failed on the first batch" in caplog.text
    assert scores == pytest.approx(tiny_reranker.backend.relevance(messages, images), abs=1e-6)
    assert fallback.relevance(messages, images) == pytest.approx(scores) and switches == ["sdpa"]


def test_a_failure_that_sdpa_shares_keeps_flash_attention_and_its_error(flash_that_fails, image_dir, monkeypatch):
    from PIL import Image

    fallback, switches = flash_that_fails
    monkeypatch.setattr(fallback.engine.model.model, "forward", lambda *a, **k: (_ for _ in ()).throw(
        ValueError("a broken input")))
    (result,) = fallback.relevance(rerank_messages("a cat", None), [Image.open(image_dir / "good0.png")])
    assert isinstance(result, ValueError) and switches == ["sdpa", "flash_attention_2"]
    assert fallback.describe()["attention"] == "flash_attention_2"


def test_zero_gpu_reservations_grow_with_the_weights_and_the_images():
    assert zero_gpu.gpu_seconds(0, 0) == 20
    assert zero_gpu.gpu_seconds(100, 16_600_000_000) == 20 + 17 + 50  # the 16.6 GB model, 100 images
    assert zero_gpu.images_within(300, 16_600_000_000) == 526
    assert zero_gpu.gpu_seconds(zero_gpu.images_within(300, 16_600_000_000), 16_600_000_000) <= 300
    assert zero_gpu.on_zero_gpu({"SPACES_ZERO_GPU": "true"}) and not zero_gpu.on_zero_gpu({"SPACES_ZERO_GPU": "false"})
