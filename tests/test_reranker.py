"""Integration: the real transformers Qwen2.5-VL classes on a tiny random checkpoint,
loaded through the same ``from_pretrained`` path as vec-ai/lychee-rerank-mm.

Random weights make the scores meaningless, so these tests check structure, equality
between code paths, determinism and error handling - never which image "should" win.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from lychee import PRESETS, LycheeReranker, RerankError, protocol

from .conftest import make_image

QUERY = "一只black cat坐在red sofa上"
BATCH_TOLERANCE = 1e-4  # max |score difference| on the 0-10 scale, batched vs one at a time (fp32)
BF16_BATCH_TOLERANCE = 0.05  # the same in bf16, where padding changes the rounding inside the model
SAMPLE_PHOTOS = sorted(str(p) for p in (Path(__file__).resolve().parent.parent / "examples" / "images").glob("*.jpg"))


def good_paths(image_dir):
    return sorted(str(p) for p in image_dir.glob("good*.png"))


def test_loads_through_from_pretrained_with_yes_and_no_ids(tiny_reranker):
    tokenizer = tiny_reranker.backend.engine.processor.tokenizer
    assert tokenizer.decode([tiny_reranker.backend.engine.yes_id]) == "yes"
    assert tokenizer.decode([tiny_reranker.backend.engine.no_id]) == "no"
    assert tokenizer.padding_side == "left"
    assert tiny_reranker.describe()["device"] == "cpu"
    assert tiny_reranker.describe()["dtype"] == "fp32"


def test_model_id_comes_from_the_environment_when_not_given(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("LYCHEE_MODEL", str(tiny_checkpoint))
    assert LycheeReranker(device="cpu").model_id == str(tiny_checkpoint)


def test_unknown_model_directory_fails_clearly(tmp_path):
    with pytest.raises(OSError):
        LycheeReranker(str(tmp_path / "missing"), device="cpu")


def test_prompt_follows_the_lychee_protocol(tiny_reranker):
    prompt = tiny_reranker.backend.engine.render(protocol.rerank_messages("a cat"))
    assert prompt.startswith(f"<|im_start|>system\n{protocol.SYSTEM_PROMPT}<|im_end|>")
    assert (f"<Instruct>: {protocol.DEFAULT_INSTRUCTION}<Query>:a cat\n<Document>:"
            "<|vision_start|><|image_pad|><|vision_end|><|im_end|>") in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_scores_are_on_the_scale_with_raw_probabilities(tiny_reranker, image_dir):
    records = tiny_reranker.score(QUERY, good_paths(image_dir))
    assert [r.index for r in records] == list(range(6))
    assert [r.source for r in records] == [f"good{i}.png" for i in range(6)]
    for r in records:
        assert r.error is None and 0.0 <= r.raw_score <= 10.0
        assert r.raw_output.startswith("p(yes)=")


@pytest.mark.parametrize(("dtype", "tolerance"), [("fp32", BATCH_TOLERANCE), ("bf16", BF16_BATCH_TOLERANCE)])
def test_batched_scores_equal_one_by_one_scores(tiny_checkpoint, image_dir, dtype, tolerance):
    """Mixed sizes (so batches pad), in the dtype users run (bf16) as well as fp32."""
    paths = good_paths(image_dir) + SAMPLE_PHOTOS
    batched = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype=dtype, batch_size=6).score(QUERY, paths)
    single = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype=dtype, batch_size=1).score(QUERY, paths)
    diffs = [abs(a.raw_score - b.raw_score) for a, b in zip(batched, single)]
    assert max(diffs) <= tolerance
    assert len({round(r.raw_score, 6) for r in batched}) == len(paths)  # not quantised to a few values


def test_the_model_cards_pixel_budget_is_the_default(tiny_reranker):
    """min_pixels = 4*28*28, max_pixels = 1280*28*28: a 1920x1080 photo gets at most 1280 visual
    tokens, counted by Qwen's own smart_resize and by the processor alike."""
    engine = tiny_reranker.backend.engine
    assert (engine.min_pixels, engine.max_pixels) == (4 * 28 * 28, 1280 * 28 * 28)
    full_hd = Image.new("RGB", (1920, 1080), (10, 120, 200))
    tokens = engine.visual_tokens(full_hd)
    assert 1200 <= tokens <= 1280
    inputs = engine._inputs("x <|vision_start|><|image_pad|><|vision_end|>", [full_hd])
    assert int(inputs["image_grid_thw"].prod()) // 4 == tokens
    assert tiny_reranker.describe()["visual_tokens"] == "4-1280"


def test_batched_logits_match_the_plain_full_logits_forward(tiny_reranker, image_dir):
    """Our path (left-padded batch, last position only) equals the model card's style of
    use: one pair per forward pass, full logits, softmax over (yes, no)."""
    engine = tiny_reranker.backend.engine
    prompt = engine.render(protocol.rerank_messages(QUERY))
    images = [Image.open(p).convert("RGB") for p in good_paths(image_dir)]
    ours = engine.relevance_logits(prompt, images)  # [n]: z_yes - z_no
    for z, image in zip(ours, images):
        with torch.inference_mode():
            logits = engine.model(**engine._inputs(prompt, [image])).logits[0, -1]
        reference = torch.softmax(logits[[engine.yes_id, engine.no_id]], dim=0)[0]
        assert abs(float(z.sigmoid()) - float(reference)) * 10 <= BATCH_TOLERANCE


def test_repeated_calls_are_identical(tiny_reranker, image_dir):
    first = tiny_reranker.rerank(QUERY, good_paths(image_dir), top_k=4)
    second = tiny_reranker.rerank(QUERY, good_paths(image_dir), top_k=4)
    assert first == second


def test_paths_pil_images_and_bytes_mix_and_agree(tiny_reranker, image_dir):
    path = good_paths(image_dir)[0]
    data = Path(path).read_bytes()
    records = tiny_reranker.score(QUERY, [path, Image.open(path), data])
    assert records[0].raw_score == pytest.approx(records[1].raw_score, abs=1e-6)
    assert records[0].raw_score == pytest.approx(records[2].raw_score, abs=1e-6)
    assert [r.source for r in records] == ["good0.png", "good0.png", "image 3"]


def test_broken_files_get_errors_and_the_rest_are_still_ranked(tiny_reranker, image_dir, caplog):
    paths = good_paths(image_dir)
    broken = [str(image_dir / n) for n in ("corrupt.jpg", "notes.png", "empty.jpg")]
    mixed = [paths[0], broken[0], paths[1], broken[1], paths[2], broken[2]]
    with caplog.at_level(logging.WARNING):
        results = tiny_reranker.rerank(QUERY, mixed)
    clean = {r.index: r.raw_score for r in tiny_reranker.score(QUERY, paths[:3])}
    assert len(results) == 6
    assert [r.error is None for r in results] == [True] * 3 + [False] * 3
    assert {r.index: r.raw_score for r in results[:3]} == pytest.approx(
        {0: clean[0], 2: clean[1], 4: clean[2]}, abs=1e-6)
    errors = {r.source: r.error for r in results[3:]}
    assert errors["corrupt.jpg"] == "not a readable image (truncated JPEG)"
    assert [r.index for r in results[3:]] == [1, 3, 5]  # the one numbering: position in the list given
    assert "not a readable image" in errors["notes.png"]
    assert "empty file" in errors["empty.jpg"]
    assert all(r.score == 0.0 for r in results[3:])
    assert "corrupt.jpg" in caplog.text


def test_raise_on_error_raises_a_clear_exception(tiny_reranker, image_dir):
    with pytest.raises(RerankError, match=r"1 of 2 images failed: images\[1\] 'empty.jpg': empty file"):
        tiny_reranker.rerank(QUERY, [good_paths(image_dir)[0], str(image_dir / "empty.jpg")],
                             raise_on_error=True)


def test_threshold_top_k_and_json(tiny_reranker, image_dir):
    everything = tiny_reranker.rerank(QUERY, good_paths(image_dir), tie_epsilon=0.0)
    threshold = everything[2].score
    results = tiny_reranker.rerank(QUERY, good_paths(image_dir), score_threshold=threshold, top_k=2,
                                   tie_epsilon=0.0)
    assert results == everything[:2]
    assert json.loads(json.dumps([r.to_dict() for r in results]))[0]["rank"] == 1


def test_preset_supplies_defaults_and_explicit_arguments_win(tiny_reranker, image_dir):
    paths = good_paths(image_dir)
    everything = tiny_reranker.rerank(QUERY, paths, tie_epsilon=0.0)
    precise = PRESETS["precise"]
    with_preset = tiny_reranker.rerank(QUERY, paths, preset="precise", tie_epsilon=0.0)
    assert with_preset == [r for r in everything if r.score >= precise.score_threshold][: precise.top_k]
    overridden = tiny_reranker.rerank(QUERY, paths, preset="precise", score_threshold=None, top_k=3,
                                      tie_epsilon=0.0)
    assert overridden == everything[:3]


def test_unknown_preset_names_the_valid_ones(tiny_reranker, image_dir):
    with pytest.raises(ValueError, match="unknown preset 'fast'; choose one of: screening, precise"):
        tiny_reranker.rerank(QUERY, good_paths(image_dir), preset="fast")


@pytest.mark.parametrize("query", ["", "   \n\t"])
def test_empty_query_is_rejected(tiny_reranker, image_dir, query):
    with pytest.raises(ValueError, match="query is empty"):
        tiny_reranker.rerank(query, good_paths(image_dir))


def test_no_images_gives_no_results(tiny_reranker):
    assert tiny_reranker.rerank(QUERY, []) == []


def test_progress_reaches_the_total(tiny_reranker, image_dir):
    seen = []
    tiny_reranker.score(QUERY, good_paths(image_dir) + [str(image_dir / "empty.jpg")],
                        progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (7, 7) and seen == sorted(seen)


def test_max_pixels_bounds_visual_tokens(tiny_checkpoint):
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", max_pixels=28 * 28 * 16)
    big = Image.open(__import__("io").BytesIO(make_image(1000, 800, (10, 10, 10))))
    assert reranker.backend.engine.visual_tokens(big) <= 16
    inputs = reranker.backend.engine._inputs("x <|vision_start|><|image_pad|><|vision_end|>", [big])
    assert int(inputs["image_grid_thw"].prod()) // 4 == reranker.backend.engine.visual_tokens(big)


def test_generate_mode_keeps_unparseable_text_and_scores_zero(tiny_checkpoint, image_dir):
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", mode="generate")
    records = reranker.score(QUERY, good_paths(image_dir)[:2])
    for r in records:
        # Random weights babble: whatever came out is kept; unless it happens to state a
        # score, the image falls back to 0.0 with a specific error.
        assert isinstance(r.raw_output, str) and r.raw_output
        assert (r.error is None) or (r.raw_score == 0.0 and "could not read a 0-10 score" in r.error)
