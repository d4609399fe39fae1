"""The ``/calibrate`` endpoint of the launched demo, through a real ``gradio_client`` and the MCP client."""

from __future__ import annotations

import json

import pytest

from lychee.calibration import calibrate

from .test_mcp import with_session
from .test_url_images import data_uri

pytestmark = pytest.mark.timeout(120)

SCORES = [9.1, 3.0, 7.5, 8.2, 7.9, 1.0]
LABELS = [True, False, True, True, False, False]


@pytest.fixture(scope="module")
def client(demo_url):
    from gradio_client import Client

    return Client(demo_url, verbose=False)


def test_calibrate_is_documented_with_its_arguments(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [p["parameter_name"] for p in api["/calibrate"]["parameters"]] == [
        "scores", "labels", "report", "target_precision", "queries"]


def test_scores_and_labels_give_the_library_calibration(client):
    queries = ["cat"] * 3 + ["rocket"] * 3
    data = client.predict(SCORES, LABELS, None, 0.7, queries, api_name="/calibrate")
    assert data == calibrate(SCORES, LABELS, target_precision=0.7, queries=queries).to_dict()
    assert data["schema_version"] == 1 and data["threshold"] == 7.5 and data["counts"]["queries"] == 2


def test_a_rerank_report_and_labels_in_input_order_calibrate_its_scores(client, image_dir):
    images = [data_uri((image_dir / f"good{i}.png").read_bytes()) for i in range(4)] + [data_uri(b"not an image")]
    report = client.predict("a red square", images, api_name="/rerank_urls")
    labels = [True, False, None, True, False]   # the 3rd is not labelled; the 5th failed and is left out
    data = client.predict(report=report, labels=labels, api_name="/calibrate")
    score = {r["index"]: r["score"] for r in report["results"] + report["filtered_out"]}
    assert data == calibrate([score[0], score[1], score[3]], [True, False, True]).to_dict()


@pytest.mark.parametrize(("arguments", "message"), [
    ({"labels": [True]}, "give either scores and labels, or a report and labels / 请给出"),
    ({"scores": [9.0], "labels": [True], "report": {"schema_version": 4}}, "give either scores and labels"),
    ({"scores": [9.0, 1.0], "labels": [True]}, "scores and labels must have the same length"),
    ({"scores": [9.0], "labels": [True], "target_precision": 0}, "target_precision must be a number above 0"),
    ({"report": {"schema_version": 3}, "labels": []}, "report must be the JSON that /rerank returns"),
])
def test_bad_requests_are_refused_in_both_languages(client, arguments, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(**arguments, api_name="/calibrate")


def test_calibrate_is_an_mcp_tool(demo_url):
    async def work(session):
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert set(tools["calibrate"].inputSchema["properties"]) == {
            "scores", "labels", "report", "target_precision", "queries"}
        result = await session.call_tool("calibrate", {"scores": SCORES, "labels": LABELS, "target_precision": 0.7})
        assert not result.isError, result.content
        return json.loads(result.content[0].text)  # JSON text, not Gradio 6.31's str() of the dict

    data = with_session(demo_url, work)
    assert data["threshold"] == 7.5 and data["recommended"]["recall"] == 1.0
