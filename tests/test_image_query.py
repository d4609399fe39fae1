"""Image and image+text queries ("images like this one", "like this one, but at night") on
the real transformers classes with the tiny random checkpoint: the prompt layout, equality with
the plain two-image forward pass, the query image encoded once per request, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lychee import LycheeReranker, protocol
from lychee.backends.transformers import Engine, shared_length
from lychee.images import fit_to_budget
from lychee.messages import UserError

from .conftest import make_image

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
REFERENCE = SAMPLES / "coffee.jpg"
TOLERANCE = 1e-4       # fp32, 0-10 scale
BF16_TOLERANCE = 0.05  # bf16, batched vs one by one


def candidates() -> list[Image.Image]:
    """Mixed sizes, so batches pad: three photos and two synthetic images."""
    photos = [Image.open(SAMPLES / f"{name}.jpg").convert("RGB") for name in ("cat", "rocket", "astronaut")]
    return photos + [Image.new("RGB", (90, 300), (10, 200, 30)), Image.new("RGB", (640, 120), (200, 30, 90))]


def rendered(engine: Engine, text: str, query_image: bool) -> str:
    return engine.render(protocol.rerank_messages(text, query_image=query_image))


@pytest.mark.parametrize(("text", "image", "kind"), [("a cat", False, "text"), ("", True, "image"),
                                                      ("at night", True, "image+text")])
def test_the_prompt_has_one_image_placeholder_before_the_document_and_one_after(tiny_reranker, text, image, kind):
    prompt = rendered(tiny_reranker.backend.engine, text, image)
    before, after = prompt.split("<Document>:")
    assert before.count("<|image_pad|>") == (1 if image else 0) and after.count("<|image_pad|>") == 1
    assert f"<Instruct>: {protocol.DEFAULT_INSTRUCTIONS[kind]}" in before
    query_part = before.split("<Query>:")[1]
    if image and text:  # the query image comes first, then the query text
        assert query_part.index("<|image_pad|>") < query_part.index(text)
    assert protocol.query_kind(text, image) == kind


def test_a_query_needs_text_or_an_image(tiny_reranker):
    with pytest.raises(ValueError, match="query is empty"):
        tiny_reranker.score("  ", candidates()[:1])
    with pytest.raises(ValueError, match="needs text, an image or both"):
        protocol.rerank_messages("", query_image=False)


@pytest.mark.parametrize("text", ["", "at night"])
def test_batched_image_query_scores_equal_the_plain_two_image_forward(tiny_checkpoint, text):
    """The model's own path: the processor given [query image, candidate] - the pixels lychee
    scores, each image at its budget size - every logit computed."""
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", batch_size=3)
    engine, images = reranker.backend.engine, candidates()
    ours = [r.raw_score for r in reranker.score(text, images, query_image=REFERENCE)]
    prompt = rendered(engine, text, True)
    reference = fit_to_budget(Image.open(REFERENCE).convert("RGB"), engine.pixel_budget)
    for score, image in zip(ours, [fit_to_budget(image, engine.pixel_budget) for image in images]):
        inputs = engine.processor(text=[prompt], images=[reference, image], return_tensors="pt", size=engine._size())
        with torch.inference_mode():
            logits = engine.model(**inputs).logits[0, -1]
        plain = 10 * float(torch.softmax(logits[[engine.yes_id, engine.no_id]], dim=0)[0])
        assert abs(score - plain) <= TOLERANCE


@pytest.mark.parametrize(("dtype", "tolerance"), [("fp32", TOLERANCE), ("bf16", BF16_TOLERANCE)])
def test_batched_image_query_scores_equal_one_by_one(tiny_checkpoint, dtype, tolerance):
    batched = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype=dtype, batch_size=5)
    single = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype=dtype, batch_size=1)
    a = batched.score("at night", candidates(), query_image=REFERENCE)
    b = single.score("at night", candidates(), query_image=REFERENCE)
    assert max(abs(x.raw_score - y.raw_score) for x, y in zip(a, b)) <= tolerance


def test_cached_image_query_scores_equal_uncached(tiny_checkpoint):
    cached = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", vision_cache_bytes=64 * 2**20)
    uncached = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", vision_cache_bytes=0)
    for _ in range(2):  # the second round reads every image, the query image included, from the cache
        with_cache = cached.score("", candidates(), query_image=REFERENCE)
        without = uncached.score("", candidates(), query_image=REFERENCE)
        assert max(abs(x.raw_score - y.raw_score) for x, y in zip(with_cache, without)) <= TOLERANCE
    assert cached.backend.engine.vision_cache.hits == len(candidates()) + 1


def test_the_query_image_goes_through_the_vision_tower_once_per_request(tiny_checkpoint, monkeypatch):
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", batch_size=2, vision_cache_bytes=0)
    engine = reranker.backend.engine
    encoded: list[int] = []
    encode = Engine._encode
    monkeypatch.setattr(Engine, "_encode", lambda self, images: encoded.append(len(images)) or encode(self, images))
    images = candidates()
    reranker.score("", images, query_image=REFERENCE)
    assert sum(encoded) == len(images) + 1  # each candidate once, the query image once - not once per pair
    assert encoded[0] == 1 and len(encoded) == 1 + -(-len(images) // 2)  # the query first, then one per batch
    assert engine.vision_cache.max_bytes == 0


def test_image_text_and_text_queries_rank_through_rerank(tiny_reranker):
    images = candidates()
    for text, image in (("", REFERENCE), ("at night", REFERENCE), ("a red square", None)):
        results = tiny_reranker.rerank(text, images, query_image=image, top_k=3)
        assert [r.rank for r in results] == [1, 2, 3] and all(r.error is None for r in results)
    photo_bytes = REFERENCE.read_bytes()  # paths, bytes and PIL images are all query images
    by_bytes = tiny_reranker.score("", images, query_image=photo_bytes)
    by_pil = tiny_reranker.score("", images, query_image=Image.open(REFERENCE))
    assert [r.raw_score for r in by_bytes] == pytest.approx([r.raw_score for r in by_pil], abs=1e-6)


@pytest.mark.parametrize("bad", [b"not an image", make_image(200, 150, (90, 60, 30), "JPEG")[:300], b""])
def test_an_unreadable_query_image_refuses_the_request_in_both_languages(tiny_reranker, bad):
    with pytest.raises(UserError) as refused:
        tiny_reranker.rerank("a cat", candidates(), query_image=bad)
    assert refused.value.key == "bad_query_image"
    assert str(refused.value).startswith("the query image cannot be used: ")
    assert refused.value.text("zh").startswith("参考图片无法使用")


def test_generate_mode_refuses_image_queries(tiny_checkpoint):
    generator = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", mode="generate")
    with pytest.raises(ValueError, match="image queries need mode='logit'"):
        generator.score("", candidates()[:1], query_image=REFERENCE)


# -- the shared prefix: an image query's common beginning run once per request ----------------------

MIXED_TEXTS = ["", "a rocket on its pad", "", "green", "a white mug of coffee"]


def mixed_documents() -> tuple[list[Image.Image | None], list[str]]:
    """Images, images with text and a text alone, so rows differ in kind as well as in size."""
    images: list[Image.Image | None] = candidates()
    images[4] = None
    return images, MIXED_TEXTS


@pytest.mark.parametrize(("dtype", "tolerance"), [("fp32", TOLERANCE), ("bf16", BF16_TOLERANCE)])
@pytest.mark.parametrize("text", ["", "at night"])
def test_scores_with_the_shared_prefix_equal_the_full_rows(tiny_checkpoint, dtype, tolerance, text):
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype=dtype, batch_size=3, vision_cache_bytes=0)
    images, texts = mixed_documents()
    shared = [r.raw_score for r in reranker.score(text, images, texts=texts, query_image=REFERENCE)]
    reranker.backend.share_prefix = False
    full = [r.raw_score for r in reranker.score(text, images, texts=texts, query_image=REFERENCE)]
    assert max(abs(a - b) for a, b in zip(shared, full)) <= tolerance


def test_the_shared_prefix_is_run_once_per_request_and_rows_run_only_their_rest(tiny_checkpoint, monkeypatch):
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", batch_size=2)
    engine = reranker.backend.engine
    made, rest_tokens = [], []
    shared_prefix, forward = Engine.shared_prefix, Engine._forward
    monkeypatch.setattr(Engine, "shared_prefix", lambda self, *a: made.append(1) or shared_prefix(self, *a))
    monkeypatch.setattr(Engine, "_forward", lambda self, embeds, *a: rest_tokens.append(embeds.shape[1]) or forward(
        self, embeds, *a))
    images = candidates()
    reranker.score("at night", images, query_image=REFERENCE)
    reference_tokens = engine.visual_tokens(fit_to_budget(Image.open(REFERENCE).convert("RGB"), engine.pixel_budget))
    prefix, *rests = rest_tokens
    assert made == [1] and len(rests) == -(-len(images) // 2)  # one prefix, then one pass per batch
    assert prefix > reference_tokens and all(rest < max(engine.visual_tokens(i) for i in images) + 32 for rest in rests)


def test_the_shared_length_stops_before_a_candidate_image_and_the_last_token():
    start = 7  # <|vision_start|>
    query_image, candidate = [start, 9, 9, 8], [start, 9, 8]
    with_images = [[1, 2, *query_image, 3, *candidate, 4], [1, 2, *query_image, 3, *candidate, 4]]
    assert shared_length(with_images, start) == 7  # identical ids, but the candidates' features differ
    with_texts = [[1, 2, *query_image, 3, 5, 6], [1, 2, *query_image, 3, 5, 7, 6]]
    assert shared_length(with_texts, start) == 8   # up to where the texts part
    assert shared_length([[1, 2, 3]], start) == 2  # one row: all but its last token
    assert shared_length([[1, 2], [3, 2]], start) == 0
