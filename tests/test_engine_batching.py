"""Smart batching: sorting by visual tokens changes nothing but speed, and the batch size
follows free GPU memory."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from PIL import Image

from lychee import LycheeReranker, protocol
from lychee.backends.base import run_batched
from lychee.backends.transformers import (
    DEFAULT_BATCH_SIZE,
    MAX_AUTO_BATCH_SIZE,
    batch_size_for_memory,
    pair_activation_bytes,
)
from lychee.random_checkpoint import build_config, build_tokenizer

from .conftest import make_image

SORT_TOLERANCE = 1e-5  # max |logit difference|, sorted vs unsorted batches (fp32)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", vision_cache_bytes=0).backend.engine


@pytest.fixture(scope="module")
def mixed_images() -> list[Image.Image]:
    """Sizes whose visual-token counts are neither sorted nor equal."""
    sizes = [(60, 60), (400, 300), (90, 200), (300, 400), (120, 60), (250, 250)]
    return [Image.open(io.BytesIO(make_image(w, h, (30 * i, 90, 200 - 30 * i)))) for i, (w, h) in enumerate(sizes)]


def test_sorted_batching_gives_the_same_scores_as_unsorted(engine, mixed_images):
    prompt = engine.render(protocol.rerank_messages("a red square"))
    batches = []

    def score(batch: list[Image.Image]) -> list[list[float]]:
        batches.append([engine.visual_tokens(image) for image in batch])
        return engine.relevance_logits(prompt, batch).tolist()

    unsorted = run_batched(mixed_images, score, batch_size=2)
    by_cost = run_batched(mixed_images, score, batch_size=2, cost=engine.visual_tokens)
    tokens = [engine.visual_tokens(image) for image in mixed_images]
    assert batches[3:] == [sorted(tokens, reverse=True)[i:i + 2] for i in (0, 2, 4)] != batches[:3]
    assert torch.tensor(by_cost).sub(torch.tensor(unsorted)).abs().max() <= SORT_TOLERANCE


def test_pair_activation_estimate_of_the_7b_at_1280_visual_tokens():
    config = build_config("7b", build_tokenizer())
    estimate = pair_activation_bytes(config, 1280)
    assert 300 * 2**20 < estimate < 450 * 2**20
    assert pair_activation_bytes(config, 640) < estimate < pair_activation_bytes(config, 2560)
    assert pair_activation_bytes(config, 1280, dtype_bytes=4) == 2 * estimate


@pytest.mark.parametrize(("free", "pair", "expected"), [
    (0, 100, 1),                       # never below one pair: out of memory then halves to 1
    (1000, 100, 5),                    # half of the free memory, in whole pairs
    (10**12, 100, MAX_AUTO_BATCH_SIZE),
])
def test_batch_size_for_memory_uses_half_the_free_memory_within_bounds(free, pair, expected):
    assert batch_size_for_memory(free, pair) == expected


def test_a_requested_batch_size_wins_and_cpu_uses_the_default(engine, mixed_images):
    assert engine.batch_size(mixed_images, 3) == 3
    assert engine.batch_size(mixed_images) == DEFAULT_BATCH_SIZE
    assert engine.batch_size([]) == DEFAULT_BATCH_SIZE


def test_on_cuda_the_batch_size_follows_free_memory_at_the_largest_image(engine, mixed_images, monkeypatch):
    free = 3 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * 2**30))
    on_gpu = dataclasses.replace(engine, device=torch.device("cuda"))
    largest = max(engine.visual_tokens(image) for image in mixed_images)
    pair = pair_activation_bytes(engine.model.config, largest, dtype_bytes=4)
    assert on_gpu.batch_size(mixed_images) == batch_size_for_memory(free, pair)
