"""MCP tool results as JSON text that ``json.loads`` reads.

Gradio 6.31 builds a tool's result in ``GradioMCPServer.postprocess_output_data`` (``gradio/mcp.py``):
every output that is not a file becomes ``TextContent(text=str(output))``, so a returned dict reaches
the agent as a Python ``repr`` - single quotes, ``None``, ``True`` - that no JSON parser reads. The
app's tools return JSON objects (reports, calibrations), so the app's MCP server is given a
``postprocess_output_data`` that writes them with ``json.dumps`` first; files are left to Gradio.
``gradio_client`` callers are not touched: their results never pass through the MCP server.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from gradio_client import utils as client_utils


def as_json_text(output: Any) -> Any:
    """A dict or list as JSON text (non-ASCII kept); files and everything else as they are."""
    if isinstance(output, dict | list) and not client_utils.is_file_obj_with_meta(output):
        return json.dumps(output, ensure_ascii=False)
    return output


def answer_in_json(server: Any) -> None:
    """Make ``server`` (a ``GradioMCPServer``) write dict and list results as JSON text."""
    gradio_postprocess = server.postprocess_output_data

    def postprocess_output_data(data: Any, root_url: str) -> Any:
        return gradio_postprocess([as_json_text(output) for output in data], root_url)

    server.postprocess_output_data = postprocess_output_data


@contextlib.asynccontextmanager
async def json_tools(app: Any) -> AsyncIterator[None]:
    """A FastAPI lifespan (``launch(app_kwargs={"lifespan": ...})``): at start-up, the app's MCP
    server, if it has one, answers in JSON."""
    server = app.get_blocks().mcp_server_obj
    if server is not None:
        answer_in_json(server)
    yield
