"""The vision cache: a new query over the same images skips the processor and the vision
tower, and gives the same scores as the path without it."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from PIL import Image

from lychee import LycheeReranker, protocol
from lychee.backends.vision_cache import VisionCache, VisionFeatures, cache_bytes, image_digest
from lychee.messages import UserError

from .conftest import make_image

QUERY = "一只black cat坐在red sofa上"
SECOND_QUERY = "a yellow taxi in the rain"
CACHE_TOLERANCE = 1e-5  # max |difference|, cached vs uncached, in logits and on the 0-10 scale (fp32)


def good_images(image_dir) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(image_dir.glob("good*.png"))]


def features(nbytes: int) -> VisionFeatures:
    return VisionFeatures((1, 2, 2), torch.zeros(nbytes // 4))  # float32: 4 bytes each


@pytest.fixture
def cached(tiny_checkpoint) -> LycheeReranker:
    return LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", vision_cache_bytes=64 * 2**20)


def test_cached_logits_equal_the_plain_pixel_values_forward(cached, image_dir):
    """Misses (features computed here) and hits (features from the cache) both equal the
    model's own path, where it runs the vision tower on pixel_values itself."""
    engine, images = cached.backend.engine, good_images(image_dir)
    prompt = engine.render(protocol.rerank_messages(QUERY))
    with torch.inference_mode():
        plain = engine.model(**engine._inputs(prompt, images), logits_to_keep=1).logits[:, -1]
    plain = plain[:, engine.yes_id] - plain[:, engine.no_id]
    first = engine.relevance_logits(prompt, images)
    second = engine.relevance_logits(prompt, images)
    assert engine.vision_cache.hits == len(images)
    assert (first - plain).abs().max() <= CACHE_TOLERANCE
    assert (second - plain).abs().max() <= CACHE_TOLERANCE


def test_cached_scores_equal_uncached_scores(tiny_checkpoint, cached, image_dir):
    uncached = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", vision_cache_bytes=0)
    paths = sorted(str(p) for p in image_dir.glob("good*.png"))
    for query in (QUERY, SECOND_QUERY):  # the first call fills the cache, the second reads it
        with_cache = [r.raw_score for r in cached.score(query, paths)]
        without = [r.raw_score for r in uncached.score(query, paths)]
        assert max(abs(a - b) for a, b in zip(with_cache, without)) <= CACHE_TOLERANCE
    assert cached.backend.engine.vision_cache.hits == len(paths)
    assert len(uncached.backend.engine.vision_cache) == 0 and uncached.backend.engine.vision_cache.misses == 0


def test_second_query_over_the_same_images_skips_the_vision_tower(cached, image_dir, monkeypatch):
    paths = sorted(str(p) for p in image_dir.glob("good*.png"))
    cache = cached.backend.engine.vision_cache
    cached.score(QUERY, paths)
    assert (cache.hits, cache.misses, len(cache)) == (0, len(paths), len(paths))
    calls = []
    encode = cached.backend.engine.model.get_image_features
    monkeypatch.setattr(cached.backend.engine.model, "get_image_features",
                        lambda *args, **kwargs: calls.append(args) or encode(*args, **kwargs))
    cached.score(SECOND_QUERY, paths)
    assert (cache.hits, cache.misses) == (len(paths), len(paths))
    assert calls == []


def test_cached_entries_hold_only_their_own_memory(cached, image_dir):
    """Entries are compact copies, not views that keep a whole batch's output alive, so
    the byte bound is the memory actually held."""
    cached.score(QUERY, sorted(str(p) for p in image_dir.glob("good*.png")))
    cache = cached.backend.engine.vision_cache
    assert sum(entry.embeds.untyped_storage().nbytes() for entry in cache._entries.values()) == cache.bytes > 0


def test_different_pixel_settings_do_not_collide(cached):
    """Two engines sharing one cache and one model, differing only in max_pixels."""
    image = Image.open(io.BytesIO(make_image(400, 300, (40, 90, 160))))
    small = dataclasses.replace(cached.backend.engine, max_pixels=28 * 28 * 16)
    large = dataclasses.replace(cached.backend.engine, max_pixels=28 * 28 * 64)
    assert small.vision_cache is large.vision_cache
    assert small.visual_tokens(image) < large.visual_tokens(image)
    prompt = small.render(protocol.rerank_messages(QUERY))
    small.relevance_logits(prompt, [image])
    from_large = large.relevance_logits(prompt, [image])
    assert (small.vision_cache.hits, len(small.vision_cache)) == (0, 2)
    fresh = dataclasses.replace(large, vision_cache=VisionCache(0)).relevance_logits(prompt, [image])
    assert (from_large - fresh).abs().max() <= CACHE_TOLERANCE


def test_least_recently_used_entries_go_first_and_the_bound_holds():
    cache = VisionCache(100)
    cache.put("a", features(40))
    cache.put("b", features(40))
    assert cache.get("a") is not None  # "b" is now the least recently used
    cache.put("c", features(40))
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert cache.bytes == 80 <= cache.max_bytes and len(cache) == 2


def test_storing_a_key_again_replaces_its_entry():
    cache = VisionCache(100)
    cache.put("a", features(40))
    cache.put("a", features(60))
    assert (len(cache), cache.bytes) == (1, 60)


def test_an_entry_larger_than_the_cache_is_not_stored():
    cache = VisionCache(100)
    cache.put("a", features(40))
    cache.put("huge", features(200))
    assert cache.get("huge") is None and cache.get("a") is not None and cache.bytes == 40


def test_zero_bytes_turns_the_cache_off(tiny_checkpoint, image_dir, monkeypatch):
    monkeypatch.setenv("LYCHEE_VISION_CACHE_MB", "0")
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32")
    paths = sorted(str(p) for p in image_dir.glob("good*.png"))
    reranker.score(QUERY, paths)
    reranker.score(QUERY, paths)
    cache = reranker.backend.engine.vision_cache
    assert not cache.enabled and (len(cache), cache.hits, cache.misses) == (0, 0, 0)


def test_cache_size_comes_from_the_argument_then_the_environment_then_the_default():
    assert cache_bytes(5, {"LYCHEE_VISION_CACHE_MB": "3"}) == 5
    assert cache_bytes(None, {"LYCHEE_VISION_CACHE_MB": "3"}) == 3 * 2**20
    assert cache_bytes(None, {}) == 1024 * 2**20
    for bad in ("lots", "-5", "1.5", ""):
        with pytest.raises(ValueError, match="LYCHEE_VISION_CACHE_MB must be a whole number of MiB >= 0"):
            cache_bytes(None, {"LYCHEE_VISION_CACHE_MB": bad})
    with pytest.raises(ValueError, match="vision_cache_bytes must be >= 0"):
        cache_bytes(-1)


def test_image_digest_depends_on_the_pixels_and_the_shape_only():
    image = Image.open(io.BytesIO(make_image(32, 24, (10, 200, 30))))
    assert image_digest(image) == image_digest(image.copy())
    changed = image.copy()
    changed.putpixel((5, 3), (11, 200, 30))
    assert image_digest(changed) != image_digest(image)
    same_bytes = Image.frombytes("RGB", (24, 32), image.tobytes())
    assert image_digest(same_bytes) != image_digest(image)


def test_no_forward_pass_keeps_an_autograd_graph(cached, image_dir):
    """An image query, its candidates and an explanation leave only detached features in the cache: an entry
    with a ``grad_fn`` would keep every activation of the vision tower alive for as long as it is cached."""
    engine, images = cached.backend.engine, good_images(image_dir)
    cached.score("", images[:2], query_image=images[2])
    cached.explain("a cat", images[0], query_image=images[3], grid=2)
    entries = list(engine.vision_cache._entries.values())
    assert len(entries) >= 4
    assert all(not e.embeds.requires_grad and e.embeds.grad_fn is None for e in entries)
    assert not any(p.requires_grad for p in engine.model.parameters())


def test_a_score_that_is_not_finite_is_that_documents_error_and_the_rest_are_ranked(cached, image_dir):
    """What an fp16 overflow gives - NaN features for one image - becomes that image's error, in both
    languages; it sinks to the bottom and every other image keeps its score."""
    engine, images = cached.backend.engine, good_images(image_dir)[:4]
    clean = [r.raw_score for r in cached.score(QUERY, images)]
    poisoned = cached.scored_image(images[1])
    (key,) = engine._cache_keys([poisoned])
    entry = engine.vision_cache.get(key)
    engine.vision_cache.put(key, dataclasses.replace(entry, embeds=torch.full_like(entry.embeds, float("nan"))))
    records = cached.score(QUERY, images)
    assert records[1].raw_score == 0.0 and records[1].failure.key == "score_not_finite"
    assert "fp16" in records[1].error and "溢出" in records[1].failure.text("zh")
    assert [r.raw_score for i, r in enumerate(records) if i != 1] == pytest.approx(clean[:1] + clean[2:], abs=1e-5)
    ranked = cached.rerank(QUERY, images)
    assert ranked[-1].index == 1 and ranked[-1].error and all(r.error is None for r in ranked[:-1])
    with pytest.raises(UserError, match="not a finite number"):
        cached.explain(QUERY, images[1], grid=2)
