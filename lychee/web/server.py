"""The web server around the page: ``demo.launch`` options (theme, CSS, request-body caps, upload quotas,
API doors, ``POST /v1/rerank``, MCP) and :func:`main`, the Space's entry point."""

from __future__ import annotations

import logging
import os
from importlib import resources
from typing import Any

import gradio as gr
from gradio.route_utils import API_PREFIX
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from .. import memory
from ..body_limit import BodyLimit
from ..limits import UPLOAD_LIMIT_VARIABLES, Limits, env_name
from ..zero_gpu import on_zero_gpu
from . import serving
from .app import DOWNLOADS_KEPT_S, EXAMPLES_DIR, build_demo
from .doors import ApiDoors
from .mcp_json import json_tools
from .model_slot import ModelSlot
from .rest_routes import routes as rest_routes
from .uploads import UploadQuota
from .view import table_css

THEME = gr.themes.Soft(primary_hue="rose", secondary_hue="amber")
# Under the upload quota, older uploads are pruned first, never ones this recent: a page re-runs on its files.
UPLOADS_PRUNED_AFTER_S = 300


def stylesheet() -> str:
    """``style.css`` and the results table's per-column rules."""
    return resources.files(__package__).joinpath("style.css").read_text(encoding="utf-8") + table_css()


def launch_options(limits: Limits) -> dict[str, Any]:
    """Keyword arguments for ``demo.launch``: theme, CSS, upload and body limits, sample photos, MCP,
    and ``POST /v1/rerank`` (:mod:`lychee.web.rest_routes`).

    ``LYCHEE_MCP=1`` turns on Gradio's MCP server (needs ``pip install "mcp>=1.21,<2"``), its tools
    answering in JSON (:mod:`lychee.web.mcp_json`).
    ``show_error`` sends the reason for a refused request to API clients too. Every request
    body is capped (``LYCHEE_MAX_REQUEST_BYTES``; uploads, which go to disk, at
    ``Limits.max_upload_bytes``) before it is read; uploads are under disk quotas
    (:mod:`lychee.web.uploads`); Gradio's API routes check key, JSON size, events and file records at
    the door (:mod:`lychee.web.doors`).
    """
    body_limit = Middleware(BodyLimit, max_bytes=limits.max_request_bytes, variable=env_name("max_request_bytes"),
                            upload_max_bytes=limits.max_upload_bytes, upload_variable=UPLOAD_LIMIT_VARIABLES,
                            upload_paths=[f"{API_PREFIX}/upload"])
    upload_quota = Middleware(UploadQuota, path=f"{API_PREFIX}/upload", folder=get_upload_folder,
                              client_bytes=limits.upload_client_bytes, total_bytes=limits.upload_total_bytes,
                              keep_s=DOWNLOADS_KEPT_S, min_age_s=UPLOADS_PRUNED_AFTER_S)
    doors = Middleware(ApiDoors, max_json_values=limits.max_json_values)
    return {"theme": THEME, "css": stylesheet(), "max_file_size": limits.max_file_bytes, "show_error": True,
            "app_kwargs": {"middleware": [body_limit, upload_quota, doors], "routes": rest_routes(),
                           "lifespan": json_tools},
            "allowed_paths": [str(EXAMPLES_DIR / "images")],
            "mcp_server": os.environ.get("LYCHEE_MCP", "").strip().lower() in ("1", "true", "yes")}


def main() -> None:
    """Serve the demo. On a ZeroGPU Space the model is placed on ``cuda`` before serving, as
    ZeroGPU requires; elsewhere it loads in the background and the page is up at once."""
    memory.limit_arenas()  # before the model's and the server's threads start
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serving.quiet_repeats()
    serving.apply()
    slot = ModelSlot.for_space()
    if on_zero_gpu():
        slot.load_now()
    else:
        slot.start_loading()
    build_demo(slot).launch(**launch_options(slot.limits))
