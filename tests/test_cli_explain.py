"""``python -m lychee explain``: the map's report on stdout (md or json), its overlay as a PNG,
and usage errors found before the model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lychee.cli import EXIT_IMAGES_FAILED, EXIT_MODEL, EXIT_OK, EXIT_USAGE, main

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
CAT = str(SAMPLES / "cat.jpg")


def explain(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["explain", *args])
    out, err = capsys.readouterr()
    return code, out, err


def model(tiny_checkpoint) -> list[str]:
    return ["--model", str(tiny_checkpoint), "--device", "cpu", "--dtype", "fp32", "-q"]


def test_json_has_the_fields_of_the_library_and_a_schema_version(capsys, tiny_checkpoint, tiny_reranker):
    code, out, _ = explain(capsys, "a cat", CAT, "--grid", "2x3", "--format", "json", *model(tiny_checkpoint))
    data = json.loads(out)
    library = tiny_reranker.explain("a cat", CAT, grid=(2, 3)).to_dict()
    assert code == EXIT_OK and data["schema_version"] == 1
    assert data["grid"] == [2, 3] and data["forward_passes"] == 7 and data["source"] == "cat.jpg"
    assert data["score"] == pytest.approx(library["score"], abs=1e-4)
    for ours, theirs in zip(data["cells"], library["cells"], strict=True):
        assert ours["box"] == theirs["box"] and ours["masked_score"] == pytest.approx(theirs["masked_score"], abs=1e-4)


def test_markdown_lists_the_three_cells_for_and_against_and_the_png_is_the_overlay(capsys, tiny_checkpoint,
                                                                                  tmp_path):
    target = tmp_path / "map.png"
    code, out, _ = explain(capsys, "a cat", CAT, "--grid", "4", "--output", str(target), *model(tiny_checkpoint))
    assert code == EXIT_OK and out.startswith("# Why this score?")
    carry, against = out.split("## Carry the match")[1].split("## Count against it")
    rows = [line for line in carry.splitlines() if line.startswith("| covering the")]
    assert 1 <= len(rows) <= 3 and all("lowers the score by" in row for row in rows)
    assert all("raises the score by" in row for row in against.splitlines() if row.startswith("| covering the"))
    assert "17 forward passes" in out
    overlay = Image.open(target)
    assert overlay.format == "PNG" and overlay.width == 448 and overlay.height > 308  # image as scored + legend


def test_an_image_query_explains_without_text(capsys, tiny_checkpoint):
    reference = str(SAMPLES / "coffee.jpg")
    code, out, _ = explain(capsys, "", CAT, "--query-image", reference, "--grid", "2", "--format", "json",
                           *model(tiny_checkpoint))
    data = json.loads(out)
    assert code == EXIT_OK and (data["query_kind"], data["query_image"]) == ("image", "coffee.jpg")


@pytest.mark.parametrize(("args", "message"), [
    (["a cat", CAT, "--grid", "0"], "--grid: grid must be N (N x N cells)"),
    (["a cat", CAT, "--grid", "3x"], "--grid: grid must be N (N x N cells)"),
    (["a cat", CAT, "--grid", "12"], "grid must be a whole number N"),
    (["a cat", CAT, "--grid", "20x2"], "(11 rows x 16 columns)"),
    (["", CAT], "the query is empty"),
    (["a cat", str(SAMPLES.parent / "queries.json")], "the image cannot be used: not a readable image"),
    (["a cat", "missing.jpg"], "the image cannot be used: file not found"),
    (["", CAT, "--query-image", str(SAMPLES.parent / "queries.json")], "the query image cannot be used"),
    (["a cat", CAT, "--output", "map.jpg"], "the overlay is a PNG; give a file name ending in .png"),
    (["a cat", CAT, "--output", "missing/map.png"], "cannot write 'missing/map.png': no such folder 'missing'"),
    (["a cat", CAT, "--format", "csv"], "invalid choice: 'csv'"),
])
def test_usage_errors_exit_2_before_any_model_loads(capsys, args, message):
    code, out, err = explain(capsys, *args, "--model", "/nonexistent/model")
    assert code == EXIT_USAGE and out == ""
    assert message in err


def test_a_model_that_cannot_be_loaded_exits_3(capsys, tmp_path):
    code, _, err = explain(capsys, "a cat", CAT, "--model", str(tmp_path / "no-model"), "--device", "cpu")
    assert code == EXIT_MODEL and "could not load the model" in err


def test_a_copy_the_model_fails_on_exits_1_with_the_reason(capsys, tiny_checkpoint, monkeypatch):
    from lychee.backends.transformers import Engine

    def broken(*_, **__):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(Engine, "relevance_logits", broken)
    code, out, err = explain(capsys, "a cat", CAT, "--grid", "2", *model(tiny_checkpoint))
    assert code == EXIT_IMAGES_FAILED and out == ""
    assert "no map: the model failed on a covered copy" in err and "simulated device failure" in err
