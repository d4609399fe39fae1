"""The score store (``lychee.store``): rows, pruning, schema, refusals and several writers at once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lychee.store import APPLICATION_ID, SCHEMA_VERSION, SqliteStore, StoreError, open_store, through_store

REPO = Path(__file__).resolve().parent.parent


def test_scores_come_back_exactly_and_only_for_stored_keys(tmp_path):
    store = SqliteStore(tmp_path / "scores.sqlite")
    store.put({"a": 0.1234567890123456789, "b": 1e-300})
    assert store.get(["a", "b", "c", "a"]) == {"a": 0.1234567890123456789, "b": 1e-300}


def test_scores_outlive_the_store_object_and_a_rewrite_replaces_them(tmp_path):
    SqliteStore(tmp_path / "scores.sqlite").put({"a": 0.5})
    store = SqliteStore(tmp_path / "scores.sqlite")
    assert store.get(["a"]) == {"a": 0.5}
    store.put({"a": 0.25})
    assert store.get(["a"]) == {"a": 0.25} and len(store) == 1


def test_a_new_file_is_marked_a_lychee_store_at_the_current_schema_in_wal_mode(tmp_path):
    SqliteStore(tmp_path / "scores.sqlite")
    db = sqlite3.connect(tmp_path / "scores.sqlite")
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_empty_file_is_migrated_into_a_store(tmp_path):
    (tmp_path / "scores.sqlite").write_bytes(b"")
    store = SqliteStore(tmp_path / "scores.sqlite")
    store.put({"a": 0.5})
    assert store.get(["a"]) == {"a": 0.5}


def test_beyond_the_cap_the_least_recently_used_rows_are_pruned(tmp_path):
    store = SqliteStore(tmp_path / "scores.sqlite", max_rows=10)
    for i in range(10):
        store.put({f"k{i}": i / 10})
    assert store.get(["k0", "k1", "k2"])  # read: now the most recently used
    store.put({"new": 0.5})               # 11 rows: pruned to 9, the 2 least recently used go
    assert len(store) == 9
    kept = store.get([f"k{i}" for i in range(10)] + ["new"])
    assert set(kept) == {"k0", "k1", "k2", "k5", "k6", "k7", "k8", "k9", "new"}


def test_the_cap_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LYCHEE_STORE_MAX_ROWS", "3")
    assert SqliteStore(tmp_path / "scores.sqlite").max_rows == 3
    monkeypatch.setenv("LYCHEE_STORE_MAX_ROWS", "many")
    with pytest.raises(ValueError, match="LYCHEE_STORE_MAX_ROWS must be a whole number of rows >= 1, got 'many'"):
        SqliteStore(tmp_path / "scores.sqlite")


@pytest.mark.parametrize(("content", "cause"), [
    (b"this is a text file, not a store\n" * 100, "not a lychee score store, or a damaged one"),
    (bytes(range(256)) * 64, "not a lychee score store, or a damaged one"),
])
def test_a_file_that_is_not_a_database_is_refused_by_name(tmp_path, content, cause):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=cause) as refused:
        SqliteStore(path)
    assert str(path) in str(refused.value)
    assert path.read_bytes() == content  # left as it was


def test_another_programs_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="a SQLite database of another program, not a lychee score store"):
        SqliteStore(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 0


def test_a_damaged_store_is_refused(tmp_path):
    path = tmp_path / "scores.sqlite"
    store = SqliteStore(path)
    store.put({f"key-{i:05d}" * 4: i / 3000 for i in range(3000)})  # several pages
    store.close()
    sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page:4 * page] = b"\xa5" * (2 * page)  # two pages of the table overwritten
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="damaged"):
        SqliteStore(path)


def test_a_store_of_a_newer_schema_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "scores.sqlite"
    SqliteStore(path)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer than this lychee's"):
        SqliteStore(path)


def test_a_folder_or_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(StoreError, match="it is a folder"):
        SqliteStore(tmp_path)
    with pytest.raises(StoreError, match="no such folder"):
        SqliteStore(tmp_path / "missing" / "scores.sqlite")


def test_open_store_takes_a_path_a_store_or_nothing(tmp_path):
    store = open_store(tmp_path / "scores.sqlite")
    assert isinstance(store, SqliteStore) and open_store(store) is store
    assert open_store(None) is None and open_store("") is None
    with pytest.raises(TypeError, match="store must be a path or a ScoreStore"):
        open_store(42)


def test_through_store_scores_only_what_is_missing_and_stores_no_failure(tmp_path):
    store = SqliteStore(tmp_path / "scores.sqlite")
    store.put({"b": 0.2})
    asked = []

    def score(positions):
        asked.append(positions)
        return [0.1 if i == 0 else ValueError("model error") for i in positions[:-1]] + [float("nan")]

    values, from_store = through_store(store, ["a", "b", "c", "d"], score)
    assert asked == [[0, 2, 3]] and from_store == [False, True, False, False]
    assert values[:2] == [0.1, 0.2] and isinstance(values[2], ValueError) and values[3] != values[3]
    assert store.get(["a", "b", "c", "d"]) == {"a": 0.1, "b": 0.2}  # the failures are tried again next time


WRITER = """
import sys, time
from pathlib import Path
from lychee.store import SqliteStore
store = SqliteStore(sys.argv[1])
name, go = sys.argv[2], Path(sys.argv[3])
while not go.exists():  # both start writing together
    time.sleep(0.005)
for batch in range(100):
    store.put({f"{name}-{batch}-{i}": (batch * 20 + i) / 2000 for i in range(20)})
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "scores.sqlite"
    go = tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(go)], cwd=REPO,
                                stderr=subprocess.PIPE) for name in ("left", "right")]
    time.sleep(1.0)  # both have opened the store and wait
    go.touch()
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read().decode()
    store = SqliteStore(path)
    keys = [f"{name}-{batch}-{i}" for name in ("left", "right") for batch in range(100) for i in range(20)]
    assert len(store) == 4000
    assert store.get(keys) == {key: (int(key.split("-")[1]) * 20 + int(key.split("-")[2])) / 2000 for key in keys}
