"""Shared fixtures: sample images on disk and a tiny random Qwen2.5-VL checkpoint."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
from hypothesis import settings
from PIL import Image

# tests/vllm needs the real vLLM engine, which lives in its own venv (`make test-vllm`); tests/clients the
# third-party clients, in theirs (`make test-clients`).
collect_ignore = ([] if importlib.util.find_spec("vllm") else ["vllm"]) + (
    [] if importlib.util.find_spec("haystack_integrations") else ["clients"])

# Property tests judge results, not speed: a machine busy with other work must not fail them on time.
settings.register_profile("lychee", deadline=None)
settings.load_profile("lychee")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised Qwen2.5-VL checkpoint (< 1 MB) saved like a real one."""
    from lychee.random_checkpoint import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("tiny-qwen2.5-vl"), "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_reranker(tiny_checkpoint: Path):
    """One loaded reranker on the tiny checkpoint, shared by tests that only read it."""
    from lychee import LycheeReranker

    return LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", batch_size=4)


def make_image(width: int, height: int, color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    """Encoded bytes of a solid-colour image with a diagonal stripe (so images differ)."""
    image = Image.new("RGB", (width, height), color)
    for i in range(min(width, height)):
        image.putpixel((i, i), (255 - color[0], 255 - color[1], 255 - color[2]))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six valid images of different sizes and colours, plus three broken files."""
    folder = tmp_path_factory.mktemp("images")
    specs = [(64, 48, (200, 30, 30)), (40, 80, (30, 200, 30)), (96, 96, (30, 30, 200)),
             (120, 60, (220, 220, 20)), (56, 56, (20, 220, 220)), (80, 120, (128, 128, 128))]
    for i, (w, h, color) in enumerate(specs):
        (folder / f"good{i}.png").write_bytes(make_image(w, h, color))
    jpeg = make_image(200, 150, (90, 60, 30), "JPEG")
    (folder / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "notes.png").write_bytes(b"this is plain text, not an image\n")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


APP_MAX_IMAGES = 8  # the launched demo's LYCHEE_MAX_IMAGES, small so the limit is cheap to hit


@pytest.fixture(scope="session")
def demo_url(tiny_checkpoint: Path):
    """The web demo on the tiny checkpoint, served on 127.0.0.1 (a free port) for the session."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from benchmarks.load_test import free_port
    from lychee.limits import Limits
    from lychee.web.app import build_demo
    from lychee.web.model_slot import ModelSlot
    from lychee.web.server import launch_options

    slot = ModelSlot(str(tiny_checkpoint), device="cpu", dtype="fp32", limits=Limits(max_images=APP_MAX_IMAGES))
    slot.start_loading()
    demo = build_demo(slot)
    port = free_port()
    options = launch_options(slot.limits) | {"mcp_server": True}
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                            **options)
    yield url.rstrip("/")
    demo.close()
