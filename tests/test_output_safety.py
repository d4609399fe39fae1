"""What the project writes - CSV reports, log lines, the CLI's --output file, the page's
downloads folder - stays safe whatever names and targets it is given."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from lychee.cli import main
from lychee.limits import Limits
from lychee.messages import printable
from lychee.ranking import ScoredImage
from lychee.report import Report, spreadsheet_safe
from lychee.request import build_request
from lychee.settings import Settings

from .conftest import make_image

HOSTILE = '=HYPERLINK("attacker.example","click").png'


REQUEST = build_request("a cat", Settings(), Limits())


def records(*sources: str) -> list[ScoredImage]:
    return [ScoredImage(i, name, 5.0 - i, "p(yes)=0.5", None) for i, name in enumerate(sources)]


def report(*sources: str) -> Report:
    return Report.build(REQUEST, records(*sources))


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_cells_a_spreadsheet_would_run_get_a_leading_quote(cell):
    assert spreadsheet_safe(cell) == "'" + cell


@pytest.mark.parametrize("value", ["cat.png", "p(yes)=0.5", 3.5, -1.0, None, True, ""])
def test_other_cells_pass_unchanged(value):
    assert spreadsheet_safe(value) == value


def test_a_formula_file_name_is_no_formula_in_the_report_csv():
    csv_text = report(HOSTILE, "cat.png").to_csv()
    assert "'=HYPERLINK" in csv_text
    assert not any(cell.startswith("=") for line in csv_text.splitlines() for cell in line.split(","))


def test_a_formula_file_name_is_no_formula_in_the_clis_csv(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    (tmp_path / HOSTILE).write_bytes(make_image(20, 20, (200, 0, 0)))
    monkeypatch.chdir(tmp_path)  # the report names the file as given: "=HYPERLINK(...).png"
    code = main(["rank", "a red square", ".", "--format", "csv", "--quiet", "--model", str(tiny_checkpoint),
                 "--device", "cpu", "--dtype", "fp32"])
    assert code == 0
    assert "'=HYPERLINK" in capsys.readouterr().out


def test_control_characters_are_escaped_in_logged_names():
    escaped = "a.png\\n2026-12-01 CRITICAL forged\\x1b[2J\\u2028"
    assert printable("a.png\n2026-12-01 CRITICAL forged\x1b[2J\u2028") == escaped
    assert printable("猫.jpg") == "猫.jpg"


def test_an_upload_name_with_a_newline_cannot_forge_a_log_line(tiny_reranker, caplog):
    caplog.set_level(logging.WARNING, logger="lychee")
    forged = "x.png\n2026-12-01 09:00:00 CRITICAL lychee: forged"
    tiny_reranker.score("a cat", [b"not an image"], labels=[forged])
    (line,) = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert "\n" not in line and "x.png\\n2026-12-01" in line


# --- the CLI's --output -------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "red.png").write_bytes(make_image(20, 20, (200, 0, 0)))
    return tmp_path


def rank_to(folder: Path, checkpoint: Path, output: str) -> int:
    return main(["rank", "a red square", str(folder / "images"), "--output", output, "--quiet",
                 "--model", str(checkpoint), "--device", "cpu", "--dtype", "fp32"])


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*") if p.is_file()]


def test_a_symlink_target_is_written_through(folder, tiny_checkpoint):
    real = folder / "real.md"
    real.write_text("old")
    (folder / "link.md").symlink_to(real)
    assert rank_to(folder, tiny_checkpoint, str(folder / "link.md")) == 0
    assert (folder / "link.md").is_symlink() and "red.png" in real.read_text()
    assert leftovers(folder) == []


def test_a_device_target_is_written_to_not_replaced(folder, tiny_checkpoint):
    fifo = folder / "pipe"
    os.mkfifo(fifo)
    import threading

    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    assert rank_to(folder, tiny_checkpoint, str(fifo)) == 0
    reader.join(timeout=30)
    assert fifo.is_fifo() and "red.png" in received[0]
    assert leftovers(folder) == []


def test_a_folder_target_is_a_usage_error(folder, tiny_checkpoint, capsys):
    assert rank_to(folder, tiny_checkpoint, str(folder)) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "it is a folder" in error[0] and "Traceback" not in error[0]
    assert leftovers(folder) == []


def test_a_file_name_that_is_not_utf8_is_written_without_a_crash(folder, tiny_checkpoint):
    odd = os.fsdecode(b"odd-\xff.png")
    (folder / "images" / odd).write_bytes(make_image(20, 20, (0, 200, 0)))
    target = folder / os.fsdecode(b"report-\xfe.md")
    assert rank_to(folder, tiny_checkpoint, str(target)) == 0
    assert "odd-\\udcff.png" in target.read_text(encoding="utf-8")
    assert leftovers(folder) == []


def test_an_unwritable_target_is_a_usage_error(folder, tiny_checkpoint, capsys):
    assert rank_to(folder, tiny_checkpoint, "/proc/lychee-report.md") == 2  # no file can be made there, even as root
    error = capsys.readouterr().err
    assert "error: cannot write '/proc/lychee-report.md'" in error and "Traceback" not in error


# --- the page's downloads folder ----------------------------------------------------------

def test_downloads_older_than_an_hour_are_pruned(tmp_path):
    from lychee.web.service import remove_older_than

    old, fresh = tmp_path / "old", tmp_path / "fresh"
    for run in (old, fresh):
        run.mkdir()
        (run / "report.json").write_text("{}")
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))
    assert remove_older_than(tmp_path, 3600) == 1
    assert not old.exists() and (fresh / "report.json").exists()


def test_writing_downloads_prunes_the_old_ones(tmp_path):
    from lychee.web.app import write_downloads
    from lychee.web.service import Job, RerankOutcome

    stale = tmp_path / "stale"
    stale.mkdir()
    os.utime(stale, (time.time() - 7200,) * 2)
    outcome = RerankOutcome(Job(REQUEST, ()), tuple(records("a.png")), report("a.png"))
    json_path, _ = write_downloads(outcome, tmp_path)
    assert Path(json_path).exists() and not stale.exists()
