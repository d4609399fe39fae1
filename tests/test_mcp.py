"""The MCP tool an agent calls: the real ``mcp`` client over streamable HTTP against the
launched app (tiny random checkpoint)."""

from __future__ import annotations

import asyncio
import json

import pytest

from .test_url_images import data_uri

pytestmark = pytest.mark.timeout(120)


def with_session(demo_url: str, work):
    """Run ``await work(session)`` in an initialised MCP client session to the app."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def run():
        async with streamablehttp_client(f"{demo_url}/gradio_api/mcp/") as (read, write, _), \
                ClientSession(read, write) as session:
            await session.initialize()
            return await work(session)

    return asyncio.run(run())


def call_rerank_urls(demo_url: str, arguments: dict) -> dict:
    async def work(session):
        result = await session.call_tool("rerank_urls", arguments)
        assert not result.isError, result.content
        return json.loads(result.content[0].text)  # JSON text, not Gradio 6.31's str() of the dict

    return with_session(demo_url, work)


def test_the_url_tool_is_listed_with_every_argument_described_and_rerank_is_not(demo_url):
    tools = with_session(demo_url, lambda session: session.list_tools())
    by_name = {tool.name: tool for tool in tools.tools}
    assert set(by_name) == {"rerank_urls", "calibrate", "explain_url"}
    schema = by_name["rerank_urls"].inputSchema
    assert schema["required"] == ["query", "image_urls"]
    assert set(schema["properties"]) == {"query", "image_urls", "preset", "score_threshold", "top_k", "instruction",
                                         "normalize", "tie_epsilon", "max_side", "query_image_url", "texts"}
    assert all(prop.get("description") for prop in schema["properties"].values())


def test_the_tool_ranks_data_uris_and_refuses_a_loopback_url_per_image(demo_url, image_dir):
    images = [data_uri((image_dir / f"good{i}.png").read_bytes()) for i in range(3)]
    data = call_rerank_urls(demo_url, {"query": "a red square", "image_urls": [*images, "http://127.0.0.1/x.png"]})
    assert data["schema_version"] == 4
    assert data["counts"] == {"images": 4, "results": 3, "filtered_out": 0, "errors": 1, "skipped": 0,
                              "scored": 3, "from_store": 0}
    assert [r["source"] for r in sorted(data["results"], key=lambda r: r["index"])] == ["image 1", "image 2", "image 3"]
    (refused,) = data["errors"]
    assert refused["index"] == 3 and refused["source"] == "x.png"
    assert "refused URL: 127.0.0.1 is not a public address" in refused["error"]


def test_the_tool_refuses_bad_settings_with_a_bilingual_error(demo_url, image_dir):
    async def work(session):
        return await session.call_tool("rerank_urls", {"query": "a cat", "image_urls": [data_uri(b"x")],
                                                       "top_k": -1, "max_side": 10})

    result = with_session(demo_url, work)
    assert result.isError
    assert "top_k must be a whole number >= 1 (or empty for all), got -1 / top_k 必须是" in result.content[0].text


def test_the_tool_makes_a_malformed_url_that_images_error(demo_url, image_dir):
    images = [data_uri((image_dir / "good0.png").read_bytes())]
    data = call_rerank_urls(demo_url, {"query": "a red square",
                                       "image_urls": [*images, "http://xn--localhost-/a.png", "http://a.example:99999/"]})
    assert data["counts"]["results"] == 1 and data["counts"]["errors"] == 2
    assert all("refused URL" in e["error"] for e in data["errors"])
