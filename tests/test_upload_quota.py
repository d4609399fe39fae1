"""Disk quotas on uploads, against a real app server process: one client's uploads of the last hour
stop at LYCHEE_UPLOAD_CLIENT_BYTES, all of them at LYCHEE_UPLOAD_TOTAL_BYTES (old uploads pruned
first), so 40 anonymous 24 MB uploads no longer leave 1 GB on disk."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from benchmarks.load_test import serve_app

pytestmark = pytest.mark.timeout(300)

MB = 10 ** 6
BODY = b"\0" * (24 * MB - 16)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    return tmp_path_factory.mktemp("gradio-uploads")


@pytest.fixture(scope="module")
def server(tiny_checkpoint, uploads):
    env = {"GRADIO_TEMP_DIR": str(uploads), "LYCHEE_UPLOAD_CLIENT_BYTES": str(50 * MB),
           "LYCHEE_UPLOAD_TOTAL_BYTES": str(100 * MB), "LYCHEE_MAX_FILE_BYTES": str(25 * MB)}
    with serve_app(tiny_checkpoint, queue_size=4, environ=env) as running:
        yield running


def upload(url: str, client: str) -> httpx.Response:
    # Distinct bytes each time: Gradio keeps one copy of identical files.
    return httpx.post(f"{url}/gradio_api/upload", files={"files": ("big.png", os.urandom(16) + BODY, "image/png")},
                      headers={"X-Forwarded-For": client}, timeout=60)


def on_disk(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_forty_uploads_leave_at_most_the_total_quota_on_disk(server, uploads):
    assert upload(server.url, "198.51.100.1").status_code == 200
    assert upload(server.url, "198.51.100.1").status_code == 200
    refused = upload(server.url, "198.51.100.1")
    assert refused.status_code == 413 and "LYCHEE_UPLOAD_CLIENT_BYTES" in refused.json()["error"]
    statuses = [upload(server.url, f"203.0.113.{i}").status_code for i in range(40)]
    print(f"40 uploads of 24 MB from 40 clients: {statuses.count(200)} taken, {on_disk(uploads) / MB:.0f} MB on disk")
    assert statuses.count(413) >= 36 and on_disk(uploads) <= 100 * MB


def test_old_uploads_are_pruned_to_make_room(server, uploads):
    old = time.time() - 3 * 3600
    for entry in uploads.iterdir():
        os.utime(entry, (old, old))
    assert upload(server.url, "192.0.2.7").status_code == 200
    assert on_disk(uploads) <= 100 * MB
