"""The throughput benchmark runs end to end, and its FLOPs arithmetic matches the issue's.

No timing is asserted: timings belong in benchmarks/README.md, not in tests.
"""

from __future__ import annotations

import pytest

from benchmarks import throughput
from benchmarks.flops import language_model_flops, pair_flops, vision_tower_flops
from lychee.random_checkpoint import build_config, build_tokenizer


@pytest.fixture(scope="module")
def config_7b():
    return build_config("7b", build_tokenizer())


def test_a_7b_pair_at_1280_visual_tokens_is_about_25_tflop(config_7b):
    # The issue: ~2 x 7.6 B x 1360 tokens + ~7 TFLOP of vision tower = ~29 TFLOP, counting the
    # embedding table and the head at every position, which our path does not compute.
    assert 6.5e12 < vision_tower_flops(config_7b.vision_config, 4 * 1280) < 7.5e12
    assert 24e12 < pair_flops(config_7b, 1280, 80) < 27e12


def test_full_logits_add_the_vocabulary_head_at_every_position(config_7b):
    text = config_7b.text_config
    extra = language_model_flops(text, 1360, logits_positions=1360) - language_model_flops(text, 1360)
    assert extra == 2 * text.hidden_size * text.vocab_size * 1359


def test_benchmark_runs_on_the_tiny_checkpoint(capsys):
    results = throughput.main(["--size", "tiny", "--device", "cpu", "--images", "2",
                               "--visual-tokens", "16", "--reference-images", "2"])
    (result,) = results
    assert result["max_abs_score_diff"] <= 0.05
    assert result["second_query"]["cache"].startswith("VisionCache(2 images")
    assert {"ratio", "ours_images_per_s", "mfu_ours", "tflop_per_pair"} <= result.keys()
    assert "| 16 |" in capsys.readouterr().out


def test_the_batching_benchmark_runs_on_the_tiny_checkpoint(capsys):
    from benchmarks import batching

    result = batching.main(["--size", "tiny", "--images", "4", "--rounds", "1", "--settings", "auto,1"])
    auto, single = result["settings"]
    assert single["rows_per_batch"] == [1] and single["padding"] == 0.0
    assert auto["padding"] <= 0.10  # the packing bound, as measured on the batches that ran
    assert max(auto["max_abs_diff_vs_card"], single["max_abs_diff_vs_card"]) <= 0.05
    assert {"ratio_median", "ratio_min", "ratio_max"} <= auto["cpu"].keys()
    assert "| auto |" in capsys.readouterr().out


def test_the_explain_benchmark_runs_on_the_tiny_checkpoint(capsys):
    from benchmarks import explain_cost

    rows = explain_cost.main(["--size", "tiny", "--visual-tokens", "16", "--repeats", "1"])
    assert [r["forward_passes"] for r in rows] == [r["grid"][0] * r["grid"][1] + 1 for r in rows]
    assert all(r["map_s"] > 0 and r["score_s"] > 0 and r["gpu_7b_estimate"]["map_tflop"] > 0 for r in rows)
    assert "| cat.jpg (sample photo) |" in capsys.readouterr().out


def test_the_progress_cadence_benchmark_counts_every_image_through_both_stages(capsys):
    from benchmarks import progress_cadence

    figures = progress_cadence.main(["--size", "tiny", "--images", "3"])
    out = capsys.readouterr().out
    assert "decoding    3 reports" in out and "scoring " in out  # decoding reports every image
    assert figures["decoding_first_s"] <= figures["scoring_first_s"] <= figures["total_s"]
