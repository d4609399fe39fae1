"""``/explain`` (an upload) and ``/explain_url`` (a URL or data: URI; the MCP tool) of the launched
web demo, driven by a real ``gradio_client`` and the real ``mcp`` client: the map's JSON and its overlay."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from .test_url_images import data_uri

pytestmark = pytest.mark.timeout(180)

CAT = Path(__file__).resolve().parent.parent / "examples" / "images" / "cat.jpg"
QUERY = "a cat's face, close up"
# query, image, query_image, instruction, grid, max_side: by position (the route is undocumented)
ARGUMENTS = {"query": QUERY, "image": None, "query_image": None, "instruction": "", "grid": "2x3", "max_side": 1920}


@pytest.fixture(scope="module")
def client(demo_url):
    from gradio_client import Client

    return Client(demo_url, verbose=False)


def explain_upload(client, **kwargs):
    from gradio_client import handle_file

    arguments = ARGUMENTS | {"image": handle_file(str(CAT))} | kwargs
    return client.predict(*arguments.values(), api_name="/explain")


@pytest.fixture(scope="module")
def uploaded(client):
    return explain_upload(client)


def test_an_upload_gets_the_map_as_json_and_the_overlay_as_a_png(uploaded, tiny_reranker):
    data, overlay_path = uploaded
    assert data["schema_version"] == 1 and data["grid"] == [2, 3] and data["forward_passes"] == 7
    assert data["source"] == "cat.jpg" and data["image_size"] == [448, 308]
    library = tiny_reranker.explain(QUERY, CAT, grid=(2, 3))  # the same tiny checkpoint, fp32
    assert data["score"] == pytest.approx(library.score, abs=1e-4)
    assert [c["masked_score"] for c in data["cells"]] == pytest.approx([c.masked_score for c in library.cells],
                                                                        abs=1e-4)
    overlay = Image.open(overlay_path)
    assert overlay.format == "PNG" and overlay.width == 448 and overlay.height > 308


def test_a_data_uri_gives_the_map_of_the_upload(client, uploaded):
    data, overlay_path = client.predict(QUERY, data_uri(CAT.read_bytes(), "image/jpeg"), "", "", "2x3", 1920,
                                        api_name="/explain_url")
    assert data["source"] == "image 1" and Path(overlay_path).is_file()
    assert [c["masked_score"] for c in data["cells"]] == [c["masked_score"] for c in uploaded[0]["cells"]]


def test_explain_url_is_documented_with_every_argument(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = [p["parameter_name"] for p in api["/explain_url"]["parameters"]]
    assert names == ["query", "image_url", "query_image_url", "instruction", "grid", "max_side"]
    assert "/explain" not in api


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"grid": "0"}, "grid must be N (N x N cells)"),
    ({"grid": "12x2"}, "each from 1 to the image's 28-px patches (11 rows x 16 columns)"),
    ({"query": "  "}, "the query is empty"),
    ({"max_side": 10}, "max_side (longest image side) must be a whole number from 64 to 4096"),
    ({"image": None}, "no image: give the image to explain"),
])
def test_bad_input_is_refused_in_both_languages(client, kwargs, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        explain_upload(client, **kwargs)
    assert message in str(caught.value) and " / " in str(caught.value)


def test_a_url_inside_the_network_and_an_unreadable_image_are_refused(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="the image cannot be used: refused URL: 127.0.0.1 is not a public address"):
        client.predict(QUERY, "http://127.0.0.1/cat.jpg", "", "", "", 1920, api_name="/explain_url")
    with pytest.raises(AppError, match="图片无法使用"):
        client.predict(QUERY, data_uri(b"not an image"), "", "", "", 1920, api_name="/explain_url")


def call_tool(demo_url: str, arguments: dict, *, with_progress: bool):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def progress(*_):
        pass

    async def run():
        async with streamablehttp_client(f"{demo_url}/gradio_api/mcp/") as (read, write, _), \
                ClientSession(read, write) as session:
            await session.initialize()
            tools = {tool.name for tool in (await session.list_tools()).tools}
            result = await session.call_tool("explain_url", arguments,
                                             progress_callback=progress if with_progress else None)
            return tools, result

    return asyncio.run(run())


def test_the_mcp_tool_answers_with_the_json_and_the_overlay_image(demo_url):
    """Gradio 6.31 hands a tool's outputs over one by one to a client that follows progress."""
    arguments = {"query": QUERY, "grid": "2", "image_url": data_uri(CAT.read_bytes(), "image/jpeg")}
    tools, result = call_tool(demo_url, arguments, with_progress=True)
    assert "explain_url" in tools and "explain" not in tools and not result.isError
    assert result.content[0].type == "text" and json.loads(result.content[0].text)["schema_version"] == 1
    image = next(part for part in result.content if part.type == "image")
    assert Image.open(io.BytesIO(base64.b64decode(image.data))).width == 448


def test_without_progress_the_mcp_answer_is_one_text_with_the_overlay_s_url(demo_url):
    """Gradio 6.31 renders both outputs as one text then: the overlay is its file record, with a URL."""
    arguments = {"query": QUERY, "grid": "2", "image_url": data_uri(CAT.read_bytes(), "image/jpeg")}
    _, result = call_tool(demo_url, arguments, with_progress=False)
    (text,) = result.content
    assert "'schema_version': 1" in text.text and f"{demo_url}/gradio_api/file=" in text.text
