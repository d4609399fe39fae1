"""``python -m lychee rank --store FILE``: repeat runs score nothing, a killed run resumes, bad stores are refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lychee.cli import EXIT_OK, EXIT_USAGE, main

from .conftest import make_image
from .test_cli import load_daily_report

QUERY = "一只black cat坐在red sofa上"
REPO = Path(__file__).resolve().parent.parent


def folder_of(root: Path, count: int, *, start: int = 0) -> Path:
    root.mkdir(exist_ok=True)
    for i in range(start, start + count):
        (root / f"img{i:04d}.png").write_bytes(make_image(40 + i % 23, 40 + i % 17, (i * 7 % 256, 90, 200)))
    return root


def rank(capsys, checkpoint: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    code = main(["rank", QUERY, *args, "--model", str(checkpoint), "--device", "cpu", "--format", "json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else {}, err


def same_run(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what differs between runs of the same ranking: timing and where scores came from."""
    counts = {k: v for k, v in report["counts"].items() if k not in ("scored", "from_store")}
    return {**report, "counts": counts, "elapsed_s": None, "images_per_s": None}


def test_a_second_run_scores_nothing_and_gives_the_same_report(capsys, tiny_checkpoint, image_dir, tmp_path):
    store = str(tmp_path / "scores.sqlite")
    code, first, _ = rank(capsys, tiny_checkpoint, str(image_dir), "--store", store)
    assert code == EXIT_OK and (first["counts"]["scored"], first["counts"]["from_store"]) == (6, 0)
    code, second, err = rank(capsys, tiny_checkpoint, str(image_dir), "--store", store)
    assert code == EXIT_OK and (second["counts"]["scored"], second["counts"]["from_store"]) == (0, 6)
    assert same_run(second) == same_run(first)
    assert "0 scored, 6 from the store" in err


# Pairs scored one at a time score alike in every run: batched with other pairs, a score moves in its
# seventh digit (within the batching tolerance), and the reports are compared to the last digit.
ONE_AT_A_TIME = ("--batch-size", "1")


def test_one_new_image_is_the_only_one_scored(capsys, tiny_checkpoint, tmp_path):
    folder, store = folder_of(tmp_path / "in", 5), str(tmp_path / "scores.sqlite")
    rank(capsys, tiny_checkpoint, str(folder), "--store", store, *ONE_AT_A_TIME)
    folder_of(folder, 1, start=5)
    _, report, _ = rank(capsys, tiny_checkpoint, str(folder), "--store", store, *ONE_AT_A_TIME)
    assert (report["counts"]["scored"], report["counts"]["from_store"]) == (1, 5)
    _, plain, _ = rank(capsys, tiny_checkpoint, str(folder), *ONE_AT_A_TIME)
    assert same_run(report) == same_run(plain)


def test_lychee_store_in_the_environment_is_the_default(capsys, tiny_checkpoint, image_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LYCHEE_STORE", str(tmp_path / "scores.sqlite"))
    rank(capsys, tiny_checkpoint, str(image_dir))
    _, report, _ = rank(capsys, tiny_checkpoint, str(image_dir))
    assert report["counts"]["from_store"] == 6


@pytest.mark.parametrize("kind", ["text", "foreign", "damaged"])
def test_a_corrupt_or_foreign_store_is_a_usage_error_that_names_it(capsys, tiny_checkpoint, image_dir, tmp_path, kind):
    path = tmp_path / "store.sqlite"
    if kind == "text":
        path.write_text("a shopping list\n" * 200)
    elif kind == "foreign":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE photos (name TEXT)")
        db.commit()
        db.close()
    else:
        rank(capsys, tiny_checkpoint, str(image_dir), "--store", str(path))
        data = bytearray(path.read_bytes())
        data[:100] = b"\x00" * 100  # the header
        path.write_bytes(bytes(data))
    code, report, err = rank(capsys, tiny_checkpoint, str(image_dir), "--store", str(path))
    assert code == EXIT_USAGE and report == {}
    assert f"score store {str(path)!r}" in err and "not a lychee score store" in err


def cli_command(checkpoint: str, folder: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lychee", "rank", QUERY, str(folder), "--model", checkpoint, "--device", "cpu",
            "--format", "json", "-q", *args]


def rows(path: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT count(*) FROM scores").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:  # not created yet
        return 0


def test_a_run_killed_part_way_resumes_and_ends_with_the_uninterrupted_report(capsys, tiny_checkpoint, tmp_path):
    folder, store = folder_of(tmp_path / "in", 60), tmp_path / "scores.sqlite"
    small_chunks = ("--chunk-size", "2", *ONE_AT_A_TIME)  # scores are written chunk by chunk
    killed = subprocess.Popen(cli_command(str(tiny_checkpoint), folder, "--store", str(store), *small_chunks),
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while rows(store) < 10 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    kept = rows(store)
    assert 10 <= kept < 60  # killed part-way, with what was scored before it kept

    resumed = subprocess.run(cli_command(str(tiny_checkpoint), folder, "--store", str(store), *small_chunks),
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == EXIT_OK, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["counts"]["from_store"] == kept and report["counts"]["scored"] == 60 - kept
    _, uninterrupted, _ = rank(capsys, tiny_checkpoint, str(folder), *small_chunks)
    assert same_run(report) == same_run(uninterrupted)


def hub_cache(root: Path, checkpoint: Path, revisions: list[str]) -> Path:
    """A Hugging Face cache holding ``lychee-test/tiny`` at each of ``revisions`` (the same files)."""
    repo = root / "models--lychee-test--tiny"
    for revision in revisions:
        shutil.copytree(checkpoint, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    return root


def test_a_changed_model_revision_never_reuses_a_score(tiny_checkpoint, image_dir, tmp_path):
    old, new = "a" * 40, "b" * 40
    cache, store = hub_cache(tmp_path / "hub", tiny_checkpoint, [old, new]), tmp_path / "scores.sqlite"
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}

    def counts_at(revision: str) -> tuple[int, int]:
        (cache / "models--lychee-test--tiny" / "refs" / "main").write_text(revision)
        done = subprocess.run(cli_command("lychee-test/tiny", image_dir, "--store", str(store)), cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == EXIT_OK, done.stderr
        counts = json.loads(done.stdout)["counts"]
        return counts["scored"], counts["from_store"]

    assert counts_at(old) == (6, 0)
    assert counts_at(new) == (6, 0)  # another revision: scored again, though its files happen to be the same
    assert counts_at(old) == (0, 6)


def test_the_daily_report_over_the_whole_folder_scores_only_the_new_images(tiny_checkpoint, tmp_path, capsys):
    inbox, reports = folder_of(tmp_path / "inbox", 4), tmp_path / "reports"
    daily_report = load_daily_report()
    args = [QUERY, str(inbox), "--all", "--out-dir", str(reports), "--model", str(tiny_checkpoint), "--device", "cpu"]
    assert daily_report.main(args) == EXIT_OK
    folder_of(inbox, 1, start=4)
    assert daily_report.main(args) == EXIT_OK
    report = json.loads(next(reports.glob("report-*.json")).read_text(encoding="utf-8"))
    assert report["counts"]["images"] == 5 and (report["counts"]["scored"], report["counts"]["from_store"]) == (1, 4)
    assert (reports / "scores.sqlite").is_file()
    assert "5 images (1 scored, 4 from the store)" in capsys.readouterr().out.splitlines()[-1]
