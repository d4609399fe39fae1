"""What each open page says about its run while the run is under way: the language it shows now
and whether its run was cancelled. Kept in small files, one pair per browser session, so that
ZeroGPU's worker - a process forked for the GPU call, which sees only a copy of this process's
memory - reads the switch to 中文 or a Cancel made after it started. Pure: no gradio.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from ..messages import LANGUAGES, Language

_SHARED_MEMORY = Path("/dev/shm")  # a RAM-backed folder where Linux has one


class SessionBoard:
    """Per-session language and cancel flag, readable from any process forked after it was made."""

    def __init__(self, folder: str | Path | None = None) -> None:
        if folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="lychee-sessions-",
                                                       dir=_SHARED_MEMORY if _SHARED_MEMORY.is_dir() else None)
            folder = self._folder.name
        self.folder = Path(folder)

    def _path(self, session: str, kind: str) -> Path:
        # A session hash comes from the browser: hashed again, it can only ever name a file in the folder.
        return self.folder / f"{hashlib.sha256(session.encode()).hexdigest()[:32]}.{kind}"

    def set_language(self, session: str, lang: Language) -> None:
        self._path(session, "lang").write_text(lang, encoding="ascii")

    def language(self, session: str) -> Language | None:
        """The language the session's page shows now; None before it said."""
        try:
            said = self._path(session, "lang").read_text(encoding="ascii")
        except OSError:
            return None
        return said if said in LANGUAGES else None

    def cancel(self, session: str) -> None:
        self._path(session, "cancelled").touch()

    def cancelled(self, session: str) -> bool:
        return self._path(session, "cancelled").exists()

    def start_run(self, session: str) -> None:
        """A new run: the last one's Cancel no longer applies."""
        self._path(session, "cancelled").unlink(missing_ok=True)

    def forget(self, session: str) -> None:
        """The page closed: nothing of it is kept."""
        for kind in ("lang", "cancelled"):
            self._path(session, kind).unlink(missing_ok=True)
