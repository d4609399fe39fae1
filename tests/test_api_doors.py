"""What a real app server process (``python -m tests.served``, the tiny checkpoint, ``LYCHEE_API_KEY``
set) lets in through Gradio's API: no file record that is not an upload of this server, on any
event; no scoring door without the key; no JSON call that costs far more than its size, waiting or
not; no call of the internal ``run_ticket`` event; no oversized ``/calibrate``; no server path in
an error; and every answer says ``nosniff``. Wall time and resident memory are measured where the
attack was about them, against a test server on 127.0.0.1 that sends huge or endless images (which
Gradio's own downloader, in this harness, fetches as it would from a public host)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.load_test import ROOT, serve_app
from lychee.web.rest import PATHS

from .conftest import make_image
from .served import rss_mb

pytestmark = pytest.mark.timeout(300)

KEY = "door-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FILE_TYPES = {"file", "image", "gallery"}
MAX_LABELS = 1000
PNG = make_image(32, 24, (200, 30, 30))
URI = "data:image/png;base64," + base64.b64encode(PNG).decode()


class EndlessImages(http.server.BaseHTTPRequestHandler):
    """``/huge.png``: 2 GB as fast as it goes; ``/slow.png``: 64 KiB a second, for ever."""

    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.hits.append(self.path)
        slow = self.path.startswith("/slow")
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(2 * 10 ** 9))
            self.end_headers()
            for _ in range(2 * 10 ** 9 // 2 ** 16):
                self.wfile.write(b"\0" * 2 ** 16)
                if slow:
                    time.sleep(1)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def images_port() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EndlessImages)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> Path:
    """The server's upload folder (and Gradio's cache): GRADIO_TEMP_DIR."""
    return tmp_path_factory.mktemp("gradio-uploads")


@pytest.fixture(scope="module")
def log_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("log") / "server.log"


@pytest.fixture(scope="module")
def server(tiny_checkpoint, uploads, log_path):
    env = {"LYCHEE_API_KEY": KEY, "GRADIO_TEMP_DIR": str(uploads), "LYCHEE_MCP": "1", "LYCHEE_MAX_IMAGES": "4",
           "LYCHEE_MAX_LABELS": str(MAX_LABELS), "LYCHEE_FETCH_CONCURRENCY": "1", "LYCHEE_URL_TIMEOUT_S": "20",
           "MALLOC_ARENA_MAX": "2"}
    with serve_app(tiny_checkpoint, queue_size=16, environ=env, module="tests.served", log_path=log_path) as running:
        client(running.url).predict("a red square", [URI], api_name="/rerank_urls")  # model loaded, allocator warm
        yield running


@pytest.fixture(scope="module")
def config(server) -> dict:
    return httpx.get(f"{server.url}/config").json()


def client(url: str, headers: dict[str, str] | None = AUTH):
    from gradio_client import Client

    return Client(url, verbose=False, headers=headers)


def file_events(config: dict) -> list[dict]:
    """Every event with a backend function and a file, image or gallery input."""
    types = {c["id"]: c["type"] for c in config["components"]}
    return [d for d in config["dependencies"]
            if d["backend_fn"] and FILE_TYPES & {types.get(i) for i in d["inputs"]}]


def call_with(config: dict, event: dict, record: dict) -> dict:
    """The body of a call of ``event`` with ``record`` in each of its file inputs, None elsewhere."""
    types = {c["id"]: c["type"] for c in config["components"]}
    values = {"gallery": [{"image": record, "caption": None}], "file": [record], "image": record}
    return {"data": [values.get(types.get(i)) for i in event["inputs"]], "fn_index": event["id"],
            "session_hash": "door-test", "event_data": None, "trigger_id": None}


def send(url: str, event: dict, body: dict, headers: dict[str, str] | None = AUTH) -> httpx.Response:
    """A queued event joins the queue; an unqueued one (the page's own) is run at once."""
    door = "queue/join" if event["queue"] else "run/predict"
    return httpx.post(f"{url}/gradio_api/{door}", json=body, headers=headers, timeout=60)


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def record(path: str) -> dict:
    return {"path": path, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}


@pytest.mark.parametrize("where", ["huge", "slow", "file", "outside"])
def test_no_event_takes_a_file_record_that_is_not_an_upload(server, config, images_port, uploads, where):
    path = {"huge": f"http://127.0.0.1:{images_port}/huge.png", "slow": f"http://127.0.0.1:{images_port}/slow.png",
            "file": "file:/etc/passwd", "outside": "/etc/passwd"}[where]
    events = file_events(config)
    assert {e["api_name"] for e in events} >= {"rerank", "explain", "run", "restyle", "mark_stale", "add_samples"}
    EndlessImages.hits.clear()
    cached, before = files_under(uploads), rss_mb(server.pid)
    for event in events:
        started = time.perf_counter()
        answer = send(server.url, event, call_with(config, event, record(path)))
        wall = time.perf_counter() - started
        said = json.dumps(answer.json(), ensure_ascii=False)
        print(f"{event['api_name']}: {where} path refused with {answer.status_code} in {wall * 1000:.0f} ms")
        assert answer.status_code in (422, 500) and "files must" in said and "文件必须" in said, said
        assert str(ROOT) not in said and os.getcwd() not in said and "Cannot move" not in said
        assert wall < 1.0
    growth = rss_mb(server.pid) - before
    print(f"resident memory {growth:+.0f} MB after {len(events)} refusals")
    assert EndlessImages.hits == [], "the server fetched a file record's URL"
    assert files_under(uploads) == cached, "something was written to Gradio's cache"
    assert growth < 30


def test_a_bystander_is_answered_at_once_while_url_records_are_refused(server, config, images_port):
    events = [e for e in file_events(config) if e["queue"]]
    started = time.perf_counter()
    assert httpx.get(f"{server.url}/", timeout=30).status_code == 200
    idle_s = time.perf_counter() - started  # this machine's own pace, shared as it may be
    bodies = [(e, call_with(config, e, record(f"http://127.0.0.1:{images_port}/slow.png"))) for e in events] * 2
    threads = [threading.Thread(target=send, args=(server.url, e, body)) for e, body in bodies]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    assert httpx.get(f"{server.url}/", timeout=30).status_code == 200
    info_s = time.perf_counter() - started
    result = client(server.url).predict("a red square", [URI], api_name="/rerank_urls")
    rerank_s = time.perf_counter() - started - info_s
    for thread in threads:
        thread.join()
    print(f"bystander: the page in {info_s * 1000:.0f} ms (idle: {idle_s * 1000:.0f} ms), a rerank_urls in "
          f"{rerank_s * 1000:.0f} ms during {len(bodies)} refused calls")
    assert result["counts"]["results"] == 1 and info_s < idle_s + 1.0 and rerank_s < 3.0


def test_without_the_key_no_door_scores(server, config):
    queued = [d for d in config["dependencies"] if d["backend_fn"] and d["queue"]]
    assert {d["api_name"] for d in queued} >= {"rerank", "rerank_urls", "calibrate", "explain", "explain_url", "run"}
    for event in queued:
        body = {"data": [None] * len(event["inputs"]), "fn_index": event["id"], "session_hash": "no-key"}
        joined = httpx.post(f"{server.url}/gradio_api/queue/join", json=body)
        assert joined.status_code == 401 and "LYCHEE_API_KEY" in joined.json()["error"], event["api_name"]
        # The queue's API is closed: no queued event runs outside the queue, key or not.
        assert httpx.post(f"{server.url}/gradio_api/run/predict", json=body, headers=AUTH).status_code == 404
    for name in {d["api_name"] for d in queued}:
        called = httpx.post(f"{server.url}/gradio_api/call/{name}", json={"data": []})
        assert called.status_code == 401, name
    upload = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("a.png", PNG, "image/png")})
    assert upload.status_code == 401
    for path in PATHS:
        rest = httpx.post(f"{server.url}{path}", json={"query": "a cat", "documents": [URI]})
        assert rest.status_code == 401, path
    mcp = httpx.post(f"{server.url}/gradio_api/mcp/", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                     headers={"Accept": "application/json, text/event-stream"})
    assert mcp.status_code == 401
    # What stays open without the key: the page's own unqueued events (and gr.Examples' loader of an
    # example query), which never reach the model.
    unqueued = [d for d in config["dependencies"] if d["backend_fn"] and not d["queue"]]
    assert unqueued and all(d["api_visibility"] == "private" or d["api_name"] == "load_example" for d in unqueued)


def test_with_the_key_every_door_scores(server, tmp_path):
    from gradio_client import handle_file

    keyed = client(server.url)
    assert keyed.predict("a red square", [URI], api_name="/rerank_urls")["counts"]["results"] == 1
    uploaded = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("a.png", PNG, "image/png")},
                          headers=AUTH)
    assert uploaded.status_code == 200
    path = tmp_path / "a.png"
    path.write_bytes(PNG)
    ranked = keyed.predict("a red square", [handle_file(str(path))], "", None, None, "", False, 0.05, 512, None,
                           api_name="/rerank")
    assert ranked["counts"]["results"] == 1
    assert keyed.predict(scores=[9.0, 2.0], labels=[True, False], api_name="/calibrate")["threshold"] == 9.0
    explained, _ = keyed.predict("a red square", URI, "", "", "2", 256, api_name="/explain_url")
    assert len(explained["cells"]) == 4
    rest = httpx.post(f"{server.url}/v1/rerank", json={"query": "a cat", "documents": [URI]}, headers=AUTH,
                      timeout=60)
    assert rest.status_code == 200 and len(rest.json()["results"]) == 1
    assert mcp_rerank(server.url)["counts"]["results"] == 1


def mcp_rerank(url: str) -> dict:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def run():
        async with streamablehttp_client(f"{url}/gradio_api/mcp/", headers=AUTH) as (read, write, _), \
                ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool("rerank_urls", {"query": "a red square", "image_urls": [URI]})
            assert not result.isError, result.content
            return json.loads(result.content[0].text)

    return asyncio.run(run())


def test_the_internal_ticket_event_cannot_be_called(server, config):
    (ticket,) = [d for d in config["dependencies"] if d["api_name"] == "run_ticket"]
    joined = httpx.post(f"{server.url}/gradio_api/queue/join", headers=AUTH,
                        json={"data": ["a ticket"], "fn_index": ticket["id"], "session_hash": "outsider"})
    called = httpx.post(f"{server.url}/gradio_api/call/run_ticket", headers=AUTH, json={"data": ["a ticket"]})
    for answer in (joined, called):
        assert answer.status_code == 422 and "internal to the server" in answer.json()["error"]


@pytest.mark.parametrize(("arguments", "refusal"), [
    ({"scores": [5.0] * (MAX_LABELS + 1), "labels": [True] * (MAX_LABELS + 1)}, "at most 1,000 labels"),
    ({"scores": [9.0, 11.0], "labels": [True, False]}, "score 2 must be between 0 and 10"),
    ({"scores": [-0.5, 3.0], "labels": [True, False]}, "score 1 must be between 0 and 10"),
    ({"scores": [9.0, 2.0], "labels": [True, False], "queries": [{"q": 1}, {"q": 2}]},
     "queries must be a list of strings"),
])
def test_calibrate_refuses_what_it_cannot_take_in_both_languages(server, arguments, refusal):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as refused:
        client(server.url).predict(**arguments, api_name="/calibrate")
    message = str(refused.value)
    assert refusal in message and ("标注" in message or "分数" in message or "查询" in message), message
    assert "unhashable" not in message


def test_a_million_scores_are_refused_at_the_door_in_milliseconds(server):
    scores = json.dumps({"data": [[5.0] * 1_000_000, [True] * 1_000_000]}).encode()
    before = rss_mb(server.pid)
    started = time.perf_counter()
    answer = httpx.post(f"{server.url}/gradio_api/call/calibrate", content=scores, timeout=120,
                        headers={**AUTH, "Content-Type": "application/json"})
    wall = time.perf_counter() - started
    growth = rss_mb(server.pid) - before
    print(f"1,000,000 scores ({len(scores) / 1e6:.0f} MB): {answer.status_code} in {wall * 1000:.0f} ms, "
          f"resident memory {growth:+.0f} MB")
    assert answer.status_code == 413 and "values" in answer.json()["error"]
    assert wall < 1.0 and growth < 50


def test_no_traceback_is_logged_for_a_refused_calibration(server, log_path):
    text = log_path.read_text(errors="replace")
    assert "Traceback" not in text and "unhashable" not in text


def test_every_answer_says_nosniff(server):
    uploaded = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("a.png", PNG, "image/png")},
                          headers=AUTH).json()
    served = httpx.get(f"{server.url}/gradio_api/file={uploaded[0]}")
    assert served.status_code == 200 and served.content == PNG
    for answer in (served, httpx.get(f"{server.url}/"), httpx.get(f"{server.url}/config")):
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_calls_waiting_in_the_queue_hold_a_small_multiple_of_their_size(server, config, images_port):
    """Six calls of 10 MB each wait behind a slow one (LYCHEE_FETCH_CONCURRENCY=1): made of small
    values they are refused at the door; as data: URIs (legal) they wait holding a few times 10 MB."""
    (rerank_urls,) = [d for d in config["dependencies"] if d["api_name"] == "rerank_urls"]
    def slow_call() -> None:
        with contextlib.suppress(Exception):  # cut short when the server stops after the test
            client(server.url).predict("a cat", [f"http://slow.example:{images_port}/slow.png"],
                                       api_name="/rerank_urls")

    slow = threading.Thread(target=slow_call, daemon=True)
    EndlessImages.hits.clear()
    slow.start()
    deadline = time.monotonic() + 30
    while not EndlessImages.hits and time.monotonic() < deadline:
        time.sleep(0.1)
    assert EndlessImages.hits, "the slow call never started fetching"
    size = 10 * 2 ** 20
    small_values = b'{"data": ["a cat", [' + b"{}," * (size // 3) + b'{}]], "fn_index": %d, "session_hash": "%s"}'
    uri = "data:image/png;base64," + "A" * size
    growth = {}
    for kind in ("small values", "data: URIs"):
        before = rss_mb(server.pid)
        statuses = []
        for i in range(6):
            session = f"waiting-{kind[0]}-{i}"
            body = (small_values % (rerank_urls["id"], session.encode()) if kind == "small values" else
                    json.dumps({"data": ["a cat", [uri]], "fn_index": rerank_urls["id"], "session_hash": session}))
            statuses.append(httpx.post(f"{server.url}/gradio_api/queue/join", content=body, timeout=60,
                                       headers={**AUTH, "Content-Type": "application/json"}).status_code)
        time.sleep(1)
        growth[kind] = rss_mb(server.pid) - before
        print(f"six waiting 10 MB calls of {kind}: statuses {statuses}, resident memory {growth[kind]:+.0f} MB")
        assert statuses == ([413] * 6 if kind == "small values" else [200] * 6)
    assert slow.is_alive(), "the slow call ended before the measurement"
    assert growth["small values"] < 30
    assert growth["data: URIs"] < 6 * 10 * 5  # at most ~5x the text each
