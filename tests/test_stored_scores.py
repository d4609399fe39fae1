"""Scoring through the score store: stored scores equal fresh ones, and a key covers all a score depends on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from lychee import LycheeReranker
from lychee.backends.transformers import Engine, TransformersBackend
from lychee.protocol import rerank_messages
from lychee.random_checkpoint import build_random_checkpoint
from lychee.score_keys import model_identity, pair_keys
from lychee.store import SqliteStore

from .conftest import make_image

QUERY = "a red square"


@pytest.fixture(scope="module")
def images(image_dir: Path) -> list[str]:
    return [str(image_dir / f"good{i}.png") for i in range(6)] + [str(image_dir / "corrupt.jpg")]


def scores(records) -> list[tuple[str, float, str | None]]:
    return [(r.source, r.raw_score, r.error) for r in records]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_stored_scores_equal_fresh_ones_in_fp32_and_bf16(tiny_checkpoint, images, tmp_path, dtype):
    plain = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype=dtype, batch_size=4)
    stored = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype=dtype, batch_size=4,
                            store=tmp_path / "scores.sqlite")
    fresh = plain.score(QUERY, images)
    first, second = stored.score(QUERY, images), stored.score(QUERY, images)
    assert scores(first) == scores(fresh) == scores(second)
    assert [r.scored_by for r in first] == ["model"] * 6 + [None]   # the corrupt image never reached the model
    assert [r.scored_by for r in second] == ["store"] * 6 + [None]
    assert [r.raw_output for r in second] == [r.raw_output for r in fresh]


def test_rerank_uses_the_store_and_ranks_the_same(tiny_checkpoint, images, tmp_path):
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", store=tmp_path / "scores.sqlite")
    first = reranker.rerank(QUERY, images, top_k=3)
    store = reranker.store
    assert len(store) == 6
    assert reranker.rerank(QUERY, images, top_k=3) == first and len(store) == 6


def test_a_changed_instruction_or_query_never_reuses_a_score(tiny_checkpoint, images, tmp_path):
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", store=tmp_path / "scores.sqlite")
    reranker.score(QUERY, images)
    by_instruction = reranker.score(QUERY, images, instruction="Judge the colour only.")
    by_query = reranker.score("a blue square", images)
    assert all(r.scored_by == "model" for r in by_instruction + by_query if r.error is None)
    assert len(reranker.store) == 18


def test_a_changed_pixel_budget_or_dtype_never_reuses_a_score(tiny_checkpoint, images, tmp_path):
    path = tmp_path / "scores.sqlite"
    LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", store=path).score(QUERY, images)
    smaller = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", max_pixels=16 * 28 * 28, store=path)
    bf16 = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="bf16", store=path)
    for reranker in (smaller, bf16):
        assert all(r.scored_by == "model" for r in reranker.score(QUERY, images) if r.error is None)


def test_changed_weights_of_a_local_checkpoint_never_reuse_a_score(tiny_checkpoint, images, tmp_path):
    copy = Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"))
    path = tmp_path / "scores.sqlite"
    LycheeReranker(str(copy), device="cpu", dtype="fp32", store=path).score(QUERY, images)
    before = model_identity("transformers", str(copy))
    build_random_checkpoint(copy, "tiny", seed=1)  # the same files, other weights
    assert model_identity("transformers", str(copy)) != before
    again = LycheeReranker(str(copy), device="cpu", dtype="fp32", store=path).score(QUERY, images)
    assert all(r.scored_by == "model" for r in again if r.error is None)


def test_a_model_whose_revision_cannot_be_known_stores_nothing(tiny_checkpoint, tiny_reranker, images, tmp_path):
    engine = tiny_reranker.backend.engine
    unknown = Engine.from_model(engine.model, engine.processor, "some-org/not-in-the-cache")
    reranker = LycheeReranker(backend=TransformersBackend(unknown), store=tmp_path / "scores.sqlite")
    assert model_identity("transformers", "some-org/not-in-the-cache") is None
    assert model_identity("vllm-server", str(tiny_checkpoint)) is None  # a server's weights are not visible
    for _ in range(2):
        assert all(r.scored_by == "model" for r in reranker.score(QUERY, images) if r.error is None)
    assert len(reranker.store) == 0


def test_documents_are_keyed_by_their_text_and_a_query_image_by_its_pixels(tiny_reranker, images, tmp_path):
    reranker = LycheeReranker(backend=tiny_reranker.backend, store=tmp_path / "scores.sqlite")
    reranker.score(QUERY, images[:2], texts=["red", None])
    again = reranker.score(QUERY, images[:2], texts=["blue", None])
    assert [r.scored_by for r in again] == ["model", "store"]
    reference = make_image(40, 40, (200, 30, 30))
    reranker.score("", images[:2], query_image=reference)
    other = reranker.score("", images[:2], query_image=make_image(40, 40, (30, 30, 200)))
    assert [r.scored_by for r in other] == ["model", "model"]
    assert [r.scored_by for r in reranker.score("", images[:2], query_image=reference)] == ["store", "store"]


def test_a_key_changes_with_each_thing_a_score_depends_on():
    image = Image.new("RGB", (56, 56), (10, 20, 30))
    messages = rerank_messages(QUERY, None)
    base = {"backend": "transformers", "dtype": "fp32", "budget": (3136, 1003520), "messages": messages,
            "query_image": None, "images": [image], "texts": [""]}
    key = pair_keys("model@abc", **base)[0]
    variants = [pair_keys("model@abd", **base), pair_keys("model@abc", **{**base, "dtype": "bf16"}),
                pair_keys("model@abc", **{**base, "backend": "vllm"}),
                pair_keys("model@abc", **{**base, "budget": (3136, 802816)}),
                pair_keys("model@abc", **{**base, "messages": rerank_messages(QUERY, "Judge the colour.")}),
                pair_keys("model@abc", **{**base, "query_image": image}),
                pair_keys("model@abc", **{**base, "images": [Image.new("RGB", (56, 56), (10, 20, 31))]}),
                pair_keys("model@abc", **{**base, "texts": ["a caption"]})]
    assert len({key, *(v[0] for v in variants)}) == 1 + len(variants)
    assert pair_keys("model@abc", **base)[0] == key  # and nothing else


def test_progress_reaches_the_end_when_every_score_is_stored(tiny_reranker, images, tmp_path):
    reranker = LycheeReranker(backend=tiny_reranker.backend, store=SqliteStore(tmp_path / "scores.sqlite"))
    reranker.score(QUERY, images)
    seen = []
    reranker.score(QUERY, images, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (7, 7)
