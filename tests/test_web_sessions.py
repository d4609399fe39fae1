"""A page's language switch and Cancel reach a run that is under way in another process, as
ZeroGPU's worker is (forked for the GPU call, with a copy of the app's memory)."""

from __future__ import annotations

import multiprocessing
import time

from lychee.web.sessions import SessionBoard


def _watch(board: SessionBoard, session: str, seen: multiprocessing.Queue) -> None:
    """A stand-in for the GPU call's progress reports: what the page says, until it cancels."""
    deadline = time.monotonic() + 20
    while not board.cancelled(session) and time.monotonic() < deadline:
        time.sleep(0.01)
    seen.put((board.language(session), board.cancelled(session)))


def test_a_switch_and_a_cancel_made_after_the_fork_reach_the_forked_process():
    board = SessionBoard()
    board.set_language("page-1", "en")
    seen = multiprocessing.Queue()
    worker = multiprocessing.get_context("fork").Process(target=_watch, args=(board, "page-1", seen))
    worker.start()
    time.sleep(0.3)  # the worker is running, with a copy of this process's memory
    board.set_language("page-1", "zh")
    board.cancel("page-1")
    worker.join(timeout=20)
    assert seen.get(timeout=5) == ("zh", True)


def test_each_session_has_its_own_flags_and_a_new_run_clears_the_cancel():
    board = SessionBoard()
    board.cancel("a")
    board.set_language("a", "zh")
    assert board.cancelled("a") and not board.cancelled("b") and board.language("b") is None
    board.start_run("a")
    assert not board.cancelled("a") and board.language("a") == "zh"
    board.forget("a")
    assert board.language("a") is None and list(board.folder.iterdir()) == []


def test_a_session_hash_cannot_name_a_file_outside_the_board(tmp_path):
    board = SessionBoard(tmp_path / "board")
    board.folder.mkdir()
    board.set_language("../../etc/evil", "en")
    assert [p.parent for p in tmp_path.rglob("*.lang")] == [board.folder]
