"""The score store: scores kept across runs, processes and restarts, so nothing is scored twice.

One row per scored (query, document) pair: the pair's key (:mod:`lychee.score_keys`: a digest
of everything the score depends on) and p(yes). Anything that implements :class:`ScoreStore`
(``get`` and ``put``) can serve; :class:`SqliteStore` is the embedded default:

- one file, the standard library's ``sqlite3``, nothing to start;
- WAL mode and a busy timeout, so several processes (CLI runs, web workers, ZeroGPU's forked
  worker) read and write it at once; each process opens its own connection;
- at most ``max_rows`` rows (``LYCHEE_STORE_MAX_ROWS``): beyond it the least recently used
  rows (read or written longest ago) are pruned;
- marked as a lychee store (``application_id``) with a schema version (``user_version``):
  a file of another program, a corrupt file or a store of a newer schema is refused with a
  :class:`StoreError` that says so, and an older schema is migrated in place.

Pure: no torch, no gradio.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

log = logging.getLogger(__name__)
T = TypeVar("T")

STORE_ENV_VAR = "LYCHEE_STORE"
MAX_ROWS_ENV_VAR = "LYCHEE_STORE_MAX_ROWS"
DEFAULT_MAX_ROWS = 2_000_000  # about 250 MB of file at ~120 bytes a row
PRUNED_TO = 0.9               # pruning leaves this share of max_rows, so it is not repeated at every write
APPLICATION_ID = 0x4C594348   # "LYCH" in the SQLite header: this file is a lychee store
SCHEMA_VERSION = 1
MIGRATIONS = (  # MIGRATIONS[n] brings a store from schema version n to n + 1
    """CREATE TABLE scores (key TEXT PRIMARY KEY, p_yes REAL NOT NULL, used INTEGER NOT NULL) WITHOUT ROWID;
       CREATE INDEX scores_by_use ON scores (used);""",
)
QUERY_KEYS = 500  # keys per SELECT, well under SQLite's bound on bound parameters


class StoreError(ValueError):
    """A store that cannot be used: the message names the file and the cause."""


@runtime_checkable
class ScoreStore(Protocol):
    """What :class:`~lychee.reranker.LycheeReranker` needs from a store of scores: a database of
    another engine (e.g. a Postgres shared by replicas) serves through these three methods."""

    def get(self, keys: Sequence[str]) -> dict[str, float]:
        """The stored p(yes) of those ``keys`` that are stored (now the most recently used)."""

    def put(self, scores: Mapping[str, float]) -> None:
        """Store p(yes) under each key, replacing what a key held."""

    def close(self) -> None:
        """Let go of files and connections (a later call may open them again)."""


def max_rows_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``$LYCHEE_STORE_MAX_ROWS``, else :data:`DEFAULT_MAX_ROWS`; a bad value raises ``ValueError``."""
    text = (os.environ if environ is None else environ).get(MAX_ROWS_ENV_VAR, "").strip()
    if not text:
        return DEFAULT_MAX_ROWS
    if not text.isdecimal() or int(text) < 1:
        raise ValueError(f"{MAX_ROWS_ENV_VAR} must be a whole number of rows >= 1, got {text!r}")
    return int(text)


class SqliteStore:
    """A :class:`ScoreStore` in one SQLite file, created if missing; see the module docstring.

    The file is checked when the store is built: :class:`StoreError` if it is not a lychee store
    (another program's file, not a database, damaged) or of a newer schema. Safe to share between
    threads (one connection per process, used under a lock) and processes (WAL).
    """

    def __init__(self, path: str | os.PathLike, *, max_rows: int | None = None, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.max_rows = max_rows_from_env() if max_rows is None else max_rows
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self._last_used = 0
        with self._lock:
            self._rows = self._guarded(self._open)

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r}, max_rows={self.max_rows})"

    def _guarded(self, work: Callable[..., T], *args: object) -> T:
        """``work(connection, *args)`` with SQLite's errors said as a :class:`StoreError` naming the file."""
        try:
            return work(self._connect(), *args)
        except sqlite3.DatabaseError as exc:
            reason = str(exc)
            if "not a database" in reason or "malformed" in reason:
                reason = f"not a lychee score store, or a damaged one ({reason}); give another file"
            raise StoreError(f"score store {str(self.path)!r}: {reason}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"score store {str(self.path)!r}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        """This process's connection: a forked child (ZeroGPU's worker) must not use its parent's."""
        if self._connection is None or self._pid != os.getpid():
            if self.path.is_dir():
                raise StoreError(f"score store {str(self.path)!r}: it is a folder; give a file name")
            if not self.path.parent.is_dir():
                raise StoreError(f"score store {str(self.path)!r}: no such folder {str(self.path.parent)!r}")
            # Autocommit: every write below is one explicit BEGIN IMMEDIATE ... COMMIT transaction.
            self._connection = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None,
                                               check_same_thread=False)
            self._pid = os.getpid()
        return self._connection

    def _open(self, db: sqlite3.Connection) -> int:
        """Check the file is a lychee store, bring its schema up to date; return its row count."""
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if application_id not in (0, APPLICATION_ID) or (application_id == 0 and tables):
            raise StoreError(f"score store {str(self.path)!r}: a SQLite database of another program, not a lychee "
                             "score store; give another file")
        if version > SCHEMA_VERSION:
            raise StoreError(f"score store {str(self.path)!r}: schema version {version} is newer than this lychee's "
                             f"({SCHEMA_VERSION}); upgrade lychee or give another file")
        if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise StoreError(f"score store {str(self.path)!r}: cannot use write-ahead logging here "
                             "(a network file system?); put the store on a local disk")
        if version < SCHEMA_VERSION:
            self._migrate(db)
        problem = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            raise StoreError(f"score store {str(self.path)!r}: damaged ({problem}); give another file")
        return db.execute("SELECT count(*) FROM scores").fetchone()[0]

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Run the migrations from the stored version on, in one transaction: a process that opens
        the file at the same moment waits, then finds it up to date."""
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for step in range(version, SCHEMA_VERSION):
                log.info("score store %s: migrating schema %d -> %d", self.path, step, step + 1)
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _now(self) -> int:
        """A use time, later than every earlier one of this store (LRU order within one clock tick)."""
        self._last_used = max(time.time_ns(), self._last_used + 1)
        return self._last_used

    def get(self, keys: Sequence[str]) -> dict[str, float]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        with self._lock:
            return self._guarded(self._get, unique)

    def _get(self, db: sqlite3.Connection, keys: list[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        for start in range(0, len(keys), QUERY_KEYS):
            chunk = keys[start:start + QUERY_KEYS]
            marks = ",".join("?" * len(chunk))
            found.update(db.execute(f"SELECT key, p_yes FROM scores WHERE key IN ({marks})", chunk).fetchall())
        if found:  # a hit counts as a use: what is read keeps its place, what nobody asks for is pruned first
            used = self._now()
            db.execute("BEGIN IMMEDIATE")
            db.executemany("UPDATE scores SET used = ? WHERE key = ?", [(used, key) for key in found])
            db.execute("COMMIT")
        return found

    def put(self, scores: Mapping[str, float]) -> None:
        if not scores:
            return
        with self._lock:
            self._guarded(self._put, scores)

    def _put(self, db: sqlite3.Connection, scores: Mapping[str, float]) -> None:
        used = self._now()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO scores (key, p_yes, used) VALUES (?, ?, ?) "
                           "ON CONFLICT (key) DO UPDATE SET p_yes = excluded.p_yes, used = excluded.used",
                           [(key, float(p), used) for key, p in scores.items()])
            self._rows += len(scores)  # an estimate between counts: other processes write too
            if self._rows > self.max_rows:
                self._rows = self._prune(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _prune(self, db: sqlite3.Connection) -> int:
        """Drop the least recently used rows down to ``PRUNED_TO`` of the cap; return the rows left."""
        rows = db.execute("SELECT count(*) FROM scores").fetchone()[0]
        if rows <= self.max_rows:
            return rows
        keep = int(self.max_rows * PRUNED_TO)
        db.execute("DELETE FROM scores WHERE key IN (SELECT key FROM scores ORDER BY used LIMIT ?)", (rows - keep,))
        log.info("score store %s: pruned %d least recently used rows", self.path, rows - keep)
        return keep

    def __len__(self) -> int:
        with self._lock:
            return self._guarded(lambda db: db.execute("SELECT count(*) FROM scores").fetchone()[0])

    def close(self) -> None:
        """Close this process's connection (a later call opens it again)."""
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None


SPACE_DATA = Path("/data")  # a Hugging Face Space's persistent storage, when it has some
OFF = ("off", "0", "none")


def server_store_path(environ: Mapping[str, str] | None = None, *, space_data: Path = SPACE_DATA) -> Path | None:
    """The web app's store file: ``$LYCHEE_STORE`` (``off`` for none); unset, on a Hugging Face Space
    (``SPACE_ID``) with persistent storage mounted at ``/data``, ``/data/lychee-scores.sqlite``;
    else none. A Space without persistent storage loses its disk at each restart, so it keeps no store."""
    environ = os.environ if environ is None else environ
    given = environ.get(STORE_ENV_VAR, "").strip()
    if given:
        return None if given.lower() in OFF else Path(given).expanduser()
    if environ.get("SPACE_ID") and space_data.is_dir() and os.access(space_data, os.W_OK):
        return space_data / "lychee-scores.sqlite"
    return None


def open_store(store: str | os.PathLike | ScoreStore | None) -> ScoreStore | None:
    """``store`` as a :class:`ScoreStore`: a path opens (or creates) a :class:`SqliteStore`;
    a store object is used as it is; None or ``""`` means no store."""
    if store is None or store == "":
        return None
    if isinstance(store, (str, os.PathLike)):
        return SqliteStore(Path(store).expanduser())
    if not isinstance(store, ScoreStore):
        raise TypeError(f"store must be a path or a ScoreStore (get and put), got {type(store).__name__}")
    return store


def through_store(store: ScoreStore, keys: Sequence[str], score: Callable[[list[int]], list[float | Exception]]
                  ) -> tuple[list[float | Exception], list[bool]]:
    """Each key's p(yes): the stored ones from ``store``, the others from ``score(positions)``
    (the positions in ``keys`` not stored, in order), which are then stored; and, per key,
    whether it came from the store. An exception or a non-finite p(yes) in ``score``'s answer is
    returned, not stored.

    A store that fails (:class:`StoreError`: a full disk, a file removed) costs the caching
    only: it is logged and everything is scored."""
    try:
        found = store.get(keys)
    except StoreError as exc:
        log.warning("%s; scoring without it", exc)
        found = {}
    missing = [i for i, key in enumerate(keys) if key not in found]
    fresh = dict(zip(missing, score(missing) if missing else []))
    made = {keys[i]: p for i, p in fresh.items() if not isinstance(p, Exception) and math.isfinite(p)}
    try:
        store.put(made)
    except StoreError as exc:
        log.warning("%s; %d scores not stored", exc, len(made))
    values = [fresh[i] if i in fresh else found[key] for i, key in enumerate(keys)]
    return values, [i not in fresh for i in range(len(keys))]
