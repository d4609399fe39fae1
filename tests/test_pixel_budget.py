"""Images are resized once, by lychee, to the size the model's processor would give them, so no
processor and no vLLM server resizes them again and every backend sees the same pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from lychee import LycheeReranker, protocol
from lychee.images import budget_size, fit_to_budget, load_image, load_query_image, visual_tokens

CARD = (protocol.MIN_PIXELS, protocol.MAX_PIXELS)
sides = st.integers(1, 6000)
budgets = st.sampled_from([CARD, (protocol.MIN_PIXELS, 64 * 28 * 28), (256 * 28 * 28, 1280 * 28 * 28)])


def in_shape(width: int, height: int) -> bool:
    return max(width, height) / min(width, height) <= 200  # what images.load_image guarantees


@given(sides, sides, budgets)
def test_the_budget_size_is_the_processors_smart_resize(width, height, budget):
    """Wherever the processor's one step lands on a size it then keeps (every photo shape)."""
    if in_shape(width, height):
        step = smart_resize(height, width, 28, *budget)
        if smart_resize(*step, 28, *budget) == step:
            assert budget_size(width, height, budget) == step[::-1]


@settings(max_examples=300)
@given(sides, sides, st.sampled_from([*budgets.elements, (4 * 28 * 28, 16 * 28 * 28)]))
def test_the_budget_size_is_one_the_processor_keeps_at_any_shape_and_budget(width, height, budget):
    """Also where one step would not be: elongated images at small budgets, aspect ratios near 200:1."""
    if in_shape(width, height):
        fitted_width, fitted_height = budget_size(width, height, budget)
        assert fitted_width % 28 == 0 and fitted_height % 28 == 0
        assert smart_resize(fitted_height, fitted_width, 28, *budget) == (fitted_height, fitted_width)


def test_an_elongated_image_at_a_small_budget_is_shrunk_until_the_processor_keeps_it():
    budget = (protocol.MIN_PIXELS, 64 * 28 * 28)
    assert smart_resize(33, 3385, 28, *budget) == (28, 2268)       # one step: over max_pixels,
    assert smart_resize(28, 2268, 28, *budget) == (28, 2016)       # so the processor would shrink it again
    assert budget_size(3385, 33, budget) == (1792, 28)             # 64 visual tokens, and it stays
    assert smart_resize(28, 1792, 28, *budget) == (28, 1792)
    assert budget_size(5615, 29, (protocol.MIN_PIXELS, protocol.MAX_PIXELS)) == (5600, 28)  # 201:1 cut to 200:1


@given(sides, sides)
def test_an_image_at_its_budget_size_keeps_it(width, height):
    """Why the processor never resizes again: the budget size of a budget size is itself."""
    if in_shape(width, height):
        size = budget_size(width, height, CARD)
        assert budget_size(*size, CARD) == size


def test_a_1080p_photo_becomes_1316x728_and_1222_visual_tokens():
    photo = Image.new("RGB", (1920, 1080))
    assert budget_size(1920, 1080, CARD) == (1316, 728)
    assert visual_tokens(photo, CARD) == 1222
    assert fit_to_budget(photo, CARD).size == (1316, 728)
    fitted = fit_to_budget(photo, CARD)
    assert fit_to_budget(fitted, CARD) is fitted  # no copy when there is nothing to do


def jpeg(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(("size", "max_side"), [((1920, 1080), 1920), ((4000, 3000), 1920), ((1920, 1080), 640),
                                                 ((300, 900), 1920), ((20, 20), 1920)])
def test_a_loaded_image_is_at_the_budget_size_of_its_capped_size(size, max_side):
    image = load_image(jpeg(*size), max_side=max_side, budget=CARD)
    scale = min(1.0, max_side / max(size))
    assert image.size == budget_size(round(size[0] * scale), round(size[1] * scale), CARD)
    assert load_query_image(jpeg(*size), max_side=max_side, budget=CARD).size == image.size


def test_the_processor_does_not_resize_a_budget_sized_image(tiny_reranker):
    engine = tiny_reranker.backend.engine
    fitted = load_image(jpeg(1024, 768), budget=engine.pixel_budget)
    processor = engine.processor.image_processor
    resized = processor([fitted], size=engine._size(), return_tensors="pt")
    untouched = processor([fitted], size=engine._size(), do_resize=False, return_tensors="pt")
    assert torch.equal(resized["pixel_values"], untouched["pixel_values"])
    assert resized["image_grid_thw"].tolist() == [[1, fitted.height // 14, fitted.width // 14]]


def test_the_reranker_scores_the_budget_sized_pixels(tiny_checkpoint):
    """rerank() on the original and on the image lychee resized to its budget: one score."""
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", vision_cache_bytes=0)
    original = load_image(jpeg(1600, 1000))
    fitted = fit_to_budget(original, CARD)
    first, second = reranker.score("a red car", [original, fitted])
    assert first.raw_score == second.raw_score
