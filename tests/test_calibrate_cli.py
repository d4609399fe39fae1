"""``python -m lychee calibrate``: labels files with and without scores, bad rows, both formats."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from lychee.calibration import calibrate
from lychee.cli import EXIT_OK, EXIT_USAGE, main

MISSING_MODEL = "/no/such/checkpoint"   # loading it would fail with exit 3: proof that no model was loaded


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["calibrate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def write_csv(path: Path, header: list[str], rows: list[list[object]], encoding: str = "utf-8") -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding=encoding)
    return path


SCORED = [["a cat", "cat.jpg", "yes", 9.1], ["a cat", "dog.jpg", "no", 3.0], ["a cat", "box.jpg", "是", 7.5],
          ["a rocket", "rocket.jpg", "TRUE", 8.2], ["a rocket", "cat.jpg", "否", 7.9],
          ["a rocket", "sky.jpg", "0", 1.0]]


def test_scores_in_the_file_are_used_without_loading_a_model(capsys, tmp_path):
    labels = write_csv(tmp_path / "labels.csv", ["query", "image", "relevant", "score"], SCORED)
    code, out, err = run(capsys, str(labels), "--format", "json", "--model", MISSING_MODEL)
    assert code == EXIT_OK, err
    data = json.loads(out)
    expected = calibrate([9.1, 3.0, 7.5, 8.2, 7.9, 1.0], [True, False, True, True, False, False],
                         queries=["a cat"] * 3 + ["a rocket"] * 3).to_dict()
    assert {k: v for k, v in data.items() if k not in ("bad_rows", "unlabelled")} == expected
    assert data["schema_version"] == 1 and data["threshold"] == 8.2 and data["counts"]["queries"] == 2
    assert data["bad_rows"] == [] and data["unlabelled"] == 0


def test_the_markdown_report_tabulates_five_to_nine_and_a_half_and_the_recommendation(capsys, tmp_path):
    labels = write_csv(tmp_path / "labels.csv", ["query", "image", "relevant", "score"], SCORED)
    code, out, _ = run(capsys, str(labels), "--target-precision", "0.7")
    assert code == EXIT_OK
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[0][2:] for row in rows] == [
        "5.00", "5.50", "6.00", "6.50", "7.00", "7.50 (recommended)", "8.00", "8.50", "9.00", "9.50"]
    assert "**Recommended threshold: 7.50**: precision 75% (95% interval 30%–95%), recall 100% " \
           "(3 of 3 relevant images kept)." in out
    assert "| 8.00 | 2 | 2 | 100% | 34%–100% | 67% | 0.80 |" in out
    assert "⚠ too few labels to trust these figures: 3 relevant and 3 irrelevant" in out


def test_a_report_csv_with_a_relevant_column_added_by_hand_calibrates(capsys, tmp_path, tiny_checkpoint, image_dir):
    report = tmp_path / "report.csv"
    code = main(["rank", "a red square", *(str(image_dir / f"good{i}.png") for i in range(4)),
                 str(image_dir / "corrupt.jpg"), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "--format", "csv", "--output", str(report), "--quiet"])
    assert code == EXIT_OK
    capsys.readouterr()
    rows = list(csv.DictReader(report.open(encoding="utf-8")))
    label_of = {"good0.png": "1", "good1.png": "0", "good2.png": "1", "good3.png": "", "corrupt.jpg": "0"}
    for row in rows:
        row["relevant"] = label_of[Path(row["source"]).name]
    labelled = tmp_path / "labelled.csv"
    with labelled.open("w", encoding="utf-8-sig", newline="") as handle:  # as Excel saves it, with a BOM
        writer = csv.DictWriter(handle, fieldnames=[*rows[0].keys()])
        writer.writeheader()
        writer.writerows(rows)
    code, out, err = run(capsys, str(labelled), "--format", "json", "--model", MISSING_MODEL)
    assert code == EXIT_OK, err
    data = json.loads(out)
    score = {Path(row["source"]).name: float(row["score"]) for row in rows}
    assert data == {**calibrate([score["good0.png"], score["good1.png"], score["good2.png"]],
                                [True, False, True]).to_dict(),
                    "bad_rows": [{"file": str(labelled), "line": 2 + [r["group"] for r in rows].index("errors"),
                                  "reason": data["bad_rows"][0]["reason"]}],
                    "unlabelled": 1}
    reason = data["bad_rows"][0]["reason"]
    assert reason == "the image failed in that run: not a readable image (truncated JPEG)"
    assert data["counts"]["queries"] == 1


@pytest.fixture
def photo_folder(tmp_path, image_dir) -> Path:
    folder = tmp_path / "labelled"
    (folder / "pics").mkdir(parents=True)
    for name in ("good0.png", "good1.png", "good2.png", "good3.png", "corrupt.jpg"):
        shutil.copy(image_dir / name, folder / "pics" / name)
    return folder


def test_rows_without_scores_are_scored_like_rank_and_bad_rows_are_listed(capsys, photo_folder, tiny_checkpoint,
                                                                         monkeypatch, tmp_path):
    labels = write_csv(photo_folder / "labels.csv", ["query", "image", "relevant", "query_image"], [
        ["a red square", "pics/good0.png", "1", ""],
        ["a red square", "pics/good1.png", "no", ""],
        ["a red square", "pics/missing.png", "1", ""],          # line 4: no such file
        ["a red square", "pics/good2.png", "maybe", ""],        # line 5: unknown label
        ["a red square", "pics/corrupt.jpg", "0", ""],          # line 6: fails when scored
        ["", "pics/good3.png", "yes", "pics/good0.png"],        # an image query
        ["", "pics/good2.png", "0", "pics/good0.png"],
        ["", "pics/good1.png", "", ""],                         # not labelled
    ])
    monkeypatch.chdir(tmp_path)  # paths are relative to the CSV's folder, not to the working directory
    model = ["--model", str(tiny_checkpoint), "--device", "cpu"]
    code, out, err = run(capsys, str(labels), "--format", "json", *model)
    assert code == EXIT_OK, err
    data = json.loads(out)
    assert [(b["line"], b["reason"][:22]) for b in data["bad_rows"]] == [
        (4, "no such file: 'pics/mi"), (5, "unknown label 'maybe' "), (6, "not a readable image (")]
    assert f"{labels} line 4: no such file: 'pics/missing.png'" in err
    assert data["counts"] == {"labels": 4, "relevant": 2, "irrelevant": 2, "queries": 2} and data["unlabelled"] == 1

    pics = photo_folder / "pics"
    main(["rank", "a red square", str(pics / "good0.png"), str(pics / "good1.png"), *model, "--format", "json"])
    text_scores = {Path(r["source"]).name: r["score"] for r in json.loads(capsys.readouterr().out)["results"]}
    main(["rank", "", str(pics / "good3.png"), str(pics / "good2.png"), "--query-image", str(pics / "good0.png"),
          *model, "--format", "json"])
    image_scores = {Path(r["source"]).name: r["score"] for r in json.loads(capsys.readouterr().out)["results"]}
    scores = [text_scores["good0.png"], text_scores["good1.png"], image_scores["good3.png"], image_scores["good2.png"]]
    # the same scores as rank's (batched with a different neighbour: equal within the batching tolerance)
    assert [p["threshold"] for p in data["points"]] == pytest.approx(sorted(scores), abs=1e-4)
    expected = calibrate(scores, [True, False, True, False]).to_dict()
    assert [(p["kept"], p["relevant_kept"]) for p in data["points"]] == \
        [(p["kept"], p["relevant_kept"]) for p in expected["points"]]


def test_the_markdown_report_lists_the_rows_not_used(capsys, tmp_path):
    labels = write_csv(tmp_path / "labels.csv", ["query", "image", "relevant", "score"],
                       [["q", "a.jpg", "1", "9"], ["q", "b.jpg", "2", "4"], ["q", "c.jpg", "0", "high"]])
    code, out, _ = run(capsys, str(labels))
    assert code == EXIT_OK
    assert "## Rows not used (2)" in out
    assert f"| {labels} | 3 | unknown label '2' (use 1/0, yes/no, true/false or 是/否) |" in out
    assert f"| {labels} | 4 | no score ('high' is not a number) |" in out


def test_several_files_pool_and_each_without_a_query_column_is_one_query(capsys, tmp_path):
    first = write_csv(tmp_path / "run1.csv", ["source", "score", "relevant"], [["a", 9, 1], ["b", 2, 0]])
    second = write_csv(tmp_path / "run2.csv", ["source", "score", "relevant"], [["c", 6, 1], ["d", 4, 0]])
    out_file = tmp_path / "calibration.json"
    code, out, _ = run(capsys, str(first), str(second), "--output", str(out_file))
    assert code == EXIT_OK and out == ""
    data = json.loads(out_file.read_text(encoding="utf-8"))
    assert data["counts"] == {"labels": 4, "relevant": 2, "irrelevant": 2, "queries": 2} and data["threshold"] == 6


@pytest.mark.parametrize(("header", "rows", "extra", "message"), [
    (["image", "score"], [["a", 1]], [], "has no 'relevant' column"),
    (["image", "relevant"], [["a", 1]], [], "needs a 'score' column, or 'query' and 'image' columns"),
    (["score", "relevant"], [["x", 1]], [], "no usable labelled rows"),
    (["score", "relevant"], [[5, 1]], ["--target-precision", "1.5"], "target_precision must be a number above 0"),
])
def test_usage_errors_exit_2_with_the_reason(capsys, tmp_path, header, rows, extra, message):
    labels = write_csv(tmp_path / "labels.csv", header, rows)
    code, _, err = run(capsys, str(labels), *extra)
    assert code == EXIT_USAGE and message in err


def test_a_missing_labels_file_is_a_usage_error(capsys, tmp_path):
    code, _, err = run(capsys, str(tmp_path / "nope.csv"))
    assert code == EXIT_USAGE and "cannot read" in err


def test_the_sample_labels_file_is_usable_as_it_ships():
    from lychee.labels import read_labels

    labels = read_labels(Path(__file__).resolve().parent.parent / "examples" / "labels.csv")
    assert labels.bad_rows == [] and labels.unlabelled == 0 and len(labels.rows) == 42
    assert len({r.query_group for r in labels.rows}) == 7 and sum(r.relevant for r in labels.rows) == 10
