"""The web app's server-wide score store: where it lives, and repeat requests across restarts."""

from __future__ import annotations

from lychee.limits import Limits
from lychee.store import server_store_path
from lychee.web.model_slot import ModelSlot
from lychee.web.service import Form, accept, rerank
from lychee.web.view import status_line


def test_lychee_store_names_the_file_and_off_turns_it_off(tmp_path):
    assert server_store_path({"LYCHEE_STORE": str(tmp_path / "s.sqlite")}) == tmp_path / "s.sqlite"
    assert server_store_path({"LYCHEE_STORE": "off", "SPACE_ID": "a/b"}, space_data=tmp_path) is None


def test_a_space_keeps_a_store_only_on_persistent_storage(tmp_path):
    assert server_store_path({"SPACE_ID": "a/b"}, space_data=tmp_path) == tmp_path / "lychee-scores.sqlite"
    assert server_store_path({"SPACE_ID": "a/b"}, space_data=tmp_path / "none") is None
    assert server_store_path({}, space_data=tmp_path) is None  # off by default elsewhere


def test_a_repeat_request_after_a_restart_comes_from_the_store_and_says_so(tiny_checkpoint, image_dir, tmp_path):
    limits = Limits(max_images=8)
    images = [str(image_dir / f"good{i}.png") for i in range(4)]
    outcomes = []
    for _ in range(2):  # two slots: the app started twice on one store file
        slot = ModelSlot(str(tiny_checkpoint), device="cpu", dtype="fp32", limits=limits, store=tmp_path / "s.sqlite")
        outcomes.append(rerank(accept(Form(query="a red square"), images, limits), slot))
    first, second = outcomes
    assert (first.report.scored, second.report.from_store) == (4, 4)
    assert first.records == second.records
    assert "from the store" not in status_line(first, "en")
    assert "4 scores from the store" in status_line(second, "en") and "4 个分数取自分数库" in status_line(second, "zh")


def test_a_bad_store_file_leaves_the_app_serving_without_one(tiny_checkpoint, image_dir, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a store\n" * 100)
    limits = Limits(max_images=8)
    slot = ModelSlot(str(tiny_checkpoint), device="cpu", dtype="fp32", limits=limits, store=bad)
    outcome = rerank(accept(Form(query="a red square"), [str(image_dir / "good0.png")], limits), slot)
    assert outcome.report.scored == 1 and slot.get().store is None
