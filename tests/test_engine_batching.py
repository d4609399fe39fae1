"""Token-budget batching in the transformers backend: the batches it runs keep the padding bound
and the budget, their scores equal one-by-one scores in fp32 and bf16, the budget follows free GPU
memory on CUDA and the cache on CPU, and running out of memory still backs off."""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from lychee import LycheeReranker, protocol
from lychee.backends import transformers as backend_module
from lychee.backends.packing import MAX_PADDING, MAX_ROWS, UNLIMITED, Budget, padded_tokens, tokens_for_memory
from lychee.backends.transformers import Engine, TransformersBackend, token_activation_bytes
from lychee.random_checkpoint import build_config, build_tokenizer

from .conftest import make_image

QUERY = "a red square"
TOLERANCE = {"fp32": 1e-4, "bf16": 0.05}  # max |score difference| on the 0-10 scale, batched vs one by one
SAMPLE_PHOTOS = sorted(str(p) for p in (Path(__file__).resolve().parent.parent / "examples" / "images").glob("*.jpg"))
# Sizes whose visual-token counts are neither sorted nor equal; some within 10 % of each other.
SIZES = [(60, 60), (400, 300), (90, 200), (300, 400), (120, 60), (250, 250), (56, 56), (392, 308)]


def images_of(sizes: list[tuple[int, int]]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(make_image(w, h, (30 * i % 250, 90, 200 - 20 * i % 200))))
            for i, (w, h) in enumerate(sizes)]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> Engine:
    return LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", vision_cache_bytes=0).backend.engine


def recording(engine: Engine, batches: list[list[int]]) -> Engine:
    """A copy of ``engine`` that notes each batch's row lengths (text + visual tokens) as it scores it."""
    copy = dataclasses.replace(engine)
    text = engine.text_tokens(engine.render(protocol.rerank_messages(QUERY)))
    score = copy.relevance_logits

    def relevance_logits(prompt, images, query=None, prefix=None):
        batches.append([text + engine.visual_tokens(image) for image in images])
        return score(prompt, images, query, prefix)

    copy.relevance_logits = relevance_logits
    return copy


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_packed_batches_score_as_one_by_one_and_keep_the_padding_bound(tiny_checkpoint, dtype):
    engine = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype=dtype, vision_cache_bytes=0).backend.engine
    batches: list[list[int]] = []
    packed = LycheeReranker(backend=TransformersBackend(recording(engine, batches), batch_size=8))
    single = LycheeReranker(backend=TransformersBackend(engine, batch_size=1))
    sources = images_of(SIZES) + SAMPLE_PHOTOS
    diffs = [abs(a.raw_score - b.raw_score) for a, b in zip(packed.score(QUERY, sources), single.score(QUERY, sources))]
    assert max(diffs) <= TOLERANCE[dtype]
    assert max(map(len, batches)) > 1 and any(padded_tokens(rows) > 0 for rows in batches)  # batching happened
    for rows in batches:
        assert padded_tokens(rows) <= MAX_PADDING * sum(rows) and len(rows) <= 8


def test_a_small_image_is_not_padded_to_a_1080p_photo(engine):
    batches: list[list[int]] = []
    backend = TransformersBackend(recording(engine, batches), batch_size=8)
    backend.relevance(protocol.rerank_messages(QUERY), images_of([(1920, 1080), (300, 200), (1920, 1080)]))
    assert sorted(map(len, batches)) == [1, 2]  # the two photos together, the small image alone


def test_the_token_budget_bounds_each_batch(engine):
    batches: list[list[int]] = []
    backend = TransformersBackend(recording(engine, batches))
    row = engine.text_tokens(engine.render(protocol.rerank_messages(QUERY))) + 4  # a 56x56 image: 4 visual tokens
    backend.engine.budget = lambda rows=None: Budget(rows=MAX_ROWS, tokens=3 * row)
    backend.relevance(protocol.rerank_messages(QUERY), images_of([(56, 56)] * 7))
    assert batches == [[row] * 3, [row] * 3, [row]]


def test_an_image_query_adds_the_query_images_tokens_to_every_row(engine):
    batches: list[list[int]] = []
    backend = TransformersBackend(recording(engine, batches), batch_size=4)
    seen: list[int] = []
    backend._batched = lambda items, fn, progress, cost: seen.extend(map(cost, items)) or [0.5] * len(items)
    messages = protocol.rerank_messages("", query_image=True)
    query, image = images_of([(392, 308), (56, 56)])
    backend.relevance(messages, [image], query_image=query)
    assert seen == [engine.text_tokens(engine.render(messages)) + engine.visual_tokens(query)
                    + engine.visual_tokens(image)]


def test_out_of_memory_backs_off_and_still_scores_every_image(engine, caplog):
    calls: list[int] = []
    copy = dataclasses.replace(engine)
    score = copy.relevance_logits

    def relevance_logits(prompt, images, query=None, prefix=None):
        calls.append(len(images))
        if len(images) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return score(prompt, images, query, prefix)

    copy.relevance_logits = relevance_logits
    images = images_of([(56, 56)] * 4)
    with caplog.at_level(logging.WARNING):
        scores = TransformersBackend(copy, batch_size=4).relevance(protocol.rerank_messages(QUERY), images)
    single = TransformersBackend(engine, batch_size=1).relevance(protocol.rerank_messages(QUERY), images)
    assert calls[:3] == [4, 2, 1] and scores == pytest.approx(single, abs=1e-6)
    assert "out of memory; retrying with at most 2 pairs" in caplog.text


def test_token_activation_bytes_of_the_7b():
    config = build_config("7b", build_tokenizer())
    per_token = token_activation_bytes(config)  # bf16: the language model's token is the wider
    assert per_token == 2 * (4 * 3584 + 3 * 18944)
    assert token_activation_bytes(config, dtype_bytes=4) == 2 * per_token
    assert 150 * 2**20 < 1360 * per_token < 250 * 2**20  # a 1080p pair


def test_on_cpu_the_budget_keeps_a_batch_in_the_cache_unless_rows_are_given(engine, monkeypatch):
    monkeypatch.setattr(backend_module, "cpu_cache_bytes", lambda: 2 * 2**20)
    hidden = engine.model.config.text_config.hidden_size
    assert engine.budget() == Budget(rows=MAX_ROWS, tokens=2 * 2**20 // (hidden * 4))
    assert engine.budget(3) == Budget(rows=3, tokens=UNLIMITED)


def test_on_cuda_the_budget_follows_free_memory(engine, monkeypatch):
    free = 3 * 2**30
    monkeypatch.setattr(backend_module, "free_cuda_bytes", lambda device: free)
    on_gpu = dataclasses.replace(engine, device=torch.device("cuda"))
    token_bytes = token_activation_bytes(engine.model.config, dtype_bytes=4)
    assert on_gpu.budget() == Budget(rows=MAX_ROWS, tokens=tokens_for_memory(free, token_bytes))
    assert on_gpu.budget(4) == Budget(rows=4, tokens=tokens_for_memory(free, token_bytes))
