"""Scoring backends: one module per engine, imported only when chosen.

- ``transformers`` (default): the model in this process (:mod:`lychee.backends.transformers`);
- ``vllm``: an in-process ``vllm.LLM`` in pooling mode, for offline batch work (:mod:`lychee.backends.vllm`);
- ``vllm-server``: a client of a running vLLM server (:mod:`lychee.backends.vllm_server`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from .base import Backend

BACKENDS = {
    "transformers": "lychee.backends.transformers",
    "vllm": "lychee.backends.vllm",
    "vllm-server": "lychee.backends.vllm_server",
}
BACKEND_ENV_VAR = "LYCHEE_BACKEND"
SERVER_URL_ENV_VAR = "LYCHEE_VLLM_URL"
DEFAULT_BACKEND = "transformers"

__all__ = ["BACKENDS", "Backend", "default_backend", "load_backend"]


def default_backend(environ: Mapping[str, str] | None = None) -> str:
    """``$LYCHEE_BACKEND`` if set, else ``transformers``."""
    return (os.environ if environ is None else environ).get(BACKEND_ENV_VAR) or DEFAULT_BACKEND


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


def load_backend(name: str, **options: Any) -> Backend:
    """Import the backend ``name`` and build it with ``options`` (each module's ``load``)."""
    module = importlib.import_module(BACKENDS[check_backend_name(name)])
    return module.load(**options)
