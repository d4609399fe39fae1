"""Images are resized once, by lychee, to the pixel budget's size: Qwen's own arithmetic, a size
the processor then leaves alone, and the pixels every backend scores."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor, smart_resize

from lychee import protocol
from lychee.images import budget_size, fit_to_budget

CARD = (protocol.MIN_PIXELS, protocol.MAX_PIXELS)
BUDGETS = [CARD, (4 * 784, 256 * 784), (16 * 784, 64 * 784), (4 * 784, 16 * 784)]

# Photo-like shapes (aspect up to 4:1): one smart_resize already lands inside the budget.
photo_sizes = st.integers(28, 4096).flatmap(
    lambda w: st.tuples(st.just(w), st.integers(max(1, w // 4), w * 4)))
# Anything the loader lets through: aspect ratios up to 200:1.
any_sizes = st.integers(1, 4096).flatmap(
    lambda w: st.tuples(st.just(w), st.integers(max(1, -(-w // 200)), w * 200)))


@given(photo_sizes, st.sampled_from(BUDGETS))
def test_a_photo_gets_the_size_qwen_s_smart_resize_gives(size, budget):
    width, height = size
    assert budget_size(width, height, *budget) == smart_resize(height, width, 28, *budget)[::-1]


@settings(max_examples=300)
@given(any_sizes, st.sampled_from(BUDGETS))
def test_the_size_is_patch_aligned_and_one_the_processor_keeps(size, budget):
    width, height = budget_size(*size, *budget)
    assert width % 28 == 0 and height % 28 == 0
    assert smart_resize(height, width, 28, *budget) == (height, width)  # the processor leaves it alone


@pytest.mark.parametrize("size", [(1920, 1080), (300, 900), (33, 3385), (1, 1)])
def test_the_processor_does_not_touch_the_pixels_of_a_fitted_image(size):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    fitted = fit_to_budget(image, *CARD)
    processor = Qwen2VLImageProcessor(min_pixels=CARD[0], max_pixels=CARD[1])
    resized = processor(fitted, return_tensors="pt")["pixel_values"]
    untouched = processor(fitted, do_resize=False, return_tensors="pt")["pixel_values"]
    assert resized.shape == untouched.shape and float((resized - untouched).abs().max()) == 0.0


def test_an_image_already_at_its_budget_size_is_returned_as_it_is():
    image = Image.new("RGB", (112, 56))
    assert fit_to_budget(image, *CARD) is image


def test_an_image_scores_the_same_as_its_scored_copy(tiny_reranker):
    """The scoring path resizes with fit_to_budget; handing it the fitted copy changes nothing."""
    photo = Image.open("examples/images/rocket.jpg")
    scored = tiny_reranker.scored_image(photo)
    assert scored.size == budget_size(*photo.size, *CARD) and scored.size != photo.size
    original, copy = tiny_reranker.score("a rocket", [photo, scored])
    assert original.raw_score == copy.raw_score
