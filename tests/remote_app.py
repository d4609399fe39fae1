"""The app as a server process of the project's own venv, for suites that run in another venv
(``tests/vllm``, ``tests/clients``): :func:`served_app` starts ``python -m tests.rest_server`` and gives
its URL. Standard library only, so any venv can import it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_PYTHON_ENV = "LYCHEE_APP_PYTHON"  # the interpreter that serves the app (default: the project's .venv)
START_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def served_app() -> Iterator[str]:
    """The app on the tiny random checkpoint, served by ``$LYCHEE_APP_PYTHON`` (default ``.venv/bin/python``)
    with this worktree's code, until the block ends."""
    python = os.environ.get(APP_PYTHON_ENV, str(ROOT / ".venv" / "bin" / "python"))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen([python, "-m", "tests.rest_server", str(port)], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(url + "/"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the app did not start ({python} -m tests.rest_server, exit {process.poll()})")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)
