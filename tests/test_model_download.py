"""The first start's download of a hub model, against a stand-in Hub on 127.0.0.1: progress
(bytes, speed, time left) as huggingface_hub writes the files, the cache ``from_pretrained``
then reads, no download on a second start, and the model line of the page in each state.

The stand-in answers what ``snapshot_download`` asks of the Hub in huggingface_hub 2.x:
``GET /api/models/{repo}/revision/{revision}`` (the commit), ``GET /api/models/{repo}/tree/{commit}``
(the files and sizes), then ``HEAD`` and ``GET /{repo}/resolve/{revision}/{file}`` (with
``X-Repo-Commit``, ``ETag`` and ``Content-Length``). It sends no ``X-Xet-Hash`` header, so
every file comes over plain HTTP, slowly enough for progress to be seen on the way.

``python -m tests.test_model_download MODEL`` is one start of the web's model slot (see
:func:`main`), run in a process of its own so huggingface_hub reads ``HF_ENDPOINT`` and
``HF_HUB_CACHE`` as a real start does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lychee import download as downloads
from lychee.download import (
    DownloadError,
    DownloadProgress,
    DownloadTracker,
    download,
    human_amount,
    human_duration,
    human_size,
    human_speed,
    needs_download,
)
from lychee.messages import LANGUAGES
from lychee.web.model_slot import ModelSlot, download_line

REPO = "test-org/tiny-weights"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
READ_SIZE = 64 * 1024  # huggingface_hub reads 10 MiB at a time: a few MB would arrive in one step
ROOT = Path(__file__).resolve().parents[1]


class StandInHub(ThreadingHTTPServer):
    """The Hub's download API for ``repos`` ({repo id: {path: bytes}}) on a free port; every
    request is kept in ``requests`` as (method, path). File bodies go out at ``bytes_per_s``."""

    daemon_threads = True

    def __init__(self, repos: dict[str, dict[str, bytes]], bytes_per_s: float) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.repos = repos
        self.bytes_per_s = bytes_per_s
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def file_requests(self, method: str = "GET") -> list[str]:
        return [path for m, path in self.requests if m == method and "/resolve/" in path]


class _HubHandler(BaseHTTPRequestHandler):
    server: StandInHub

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        self.server.requests.append((self.command, self.path))
        path = self.path.partition("?")[0]
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path):
            if (files := self.server.repos.get(match[1])) is None:
                return self._json({"error": "Repository not found"}, status=404, error_code="RepoNotFound")
            return self._json({"id": match[1], "sha": COMMIT, "siblings": [{"rfilename": name} for name in files]})
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+", path):
            files = self.server.repos[match[1]]
            return self._json([{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                               for name, data in files.items()])
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path)
        data = self.server.repos.get(match[1], {}).get(match[2]) if match else None
        if data is None:
            return self._json({"error": "Entry not found"}, status=404, error_code="EntryNotFound")
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        step = 16 * 1024
        for start in range(0, len(data) if send_body else 0, step):
            self.wfile.write(data[start:start + step])
            time.sleep(step / self.server.bytes_per_s)

    def _json(self, answer: object, *, status: int = 200, error_code: str | None = None) -> None:
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Repo-Commit", COMMIT)
        if error_code:
            self.send_header("X-Error-Code", error_code)
        self.end_headers()
        self.wfile.write(body)


def serve(repos: dict[str, dict[str, bytes]], bytes_per_s: float):
    hub = StandInHub(repos, bytes_per_s)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    return hub


FILES = {  # ~2.7 MB: two weight shards that take about 1.5 s each, in parallel
    "config.json": b'{"model_type": "test"}',
    "model-00001-of-00002.safetensors": random.Random(1).randbytes(1_500_000),
    "model-00002-of-00002.safetensors": random.Random(2).randbytes(1_200_000),
}
TOTAL = sum(map(len, FILES.values()))


@pytest.fixture
def hub():
    hub = serve({REPO: FILES}, bytes_per_s=1_000_000)
    yield hub
    hub.shutdown()
    hub.server_close()


@pytest.fixture
def small_reads(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", READ_SIZE)


def download_polled(hub: StandInHub, cache: Path, every_s: float = 0.02) -> list[DownloadProgress]:
    """Download ``REPO`` from ``hub`` into ``cache``, reading the tracker as the page's timer does."""
    tracker = DownloadTracker()
    readings: list[DownloadProgress] = []
    finished = threading.Event()

    def poll() -> None:
        while not finished.is_set():
            readings.append(tracker.progress())
            time.sleep(every_s)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        download(REPO, tracker, cache_dir=cache, endpoint=hub.url)
    finally:
        finished.set()
        poller.join()
    return readings + [tracker.progress()]


# -- the download against the stand-in Hub ---------------------------------------------------------

def test_progress_rises_monotonically_to_the_total(hub, small_reads, tmp_path):
    readings = download_polled(hub, tmp_path)
    done = [reading.done for reading in readings]
    assert done == sorted(done)
    assert {reading.total for reading in readings} <= {None, TOTAL}
    assert readings[-1].done == readings[-1].total == TOTAL
    assert len({d for d in done if 0 < d < TOTAL}) >= 5  # seen on the way, not only at the ends


def test_speed_and_time_left_are_known_mid_download(hub, small_reads, tmp_path):
    readings = download_polled(hub, tmp_path)
    midway = [r for r in readings if 0 < r.done < TOTAL and r.speed is not None]
    assert len(midway) >= 5
    for reading in midway:
        assert 100_000 < reading.speed < 20_000_000  # two files at 1 MB/s each, give or take a busy machine
        assert reading.eta_s == pytest.approx((TOTAL - reading.done) / reading.speed)


def test_the_files_land_in_the_cache_where_local_files_only_finds_them(hub, small_reads, tmp_path):
    folder = download(REPO, cache_dir=tmp_path, endpoint=hub.url)
    assert huggingface_hub.snapshot_download(REPO, local_files_only=True, cache_dir=tmp_path) == folder
    assert {name: (Path(folder) / name).read_bytes() for name in FILES} == FILES
    assert sorted(hub.file_requests()) == [f"/{REPO}/resolve/{COMMIT}/{name}" for name in sorted(FILES)]  # once each


def test_a_second_start_asks_the_hub_nothing(hub, small_reads, tmp_path):
    assert needs_download(REPO, cache_dir=tmp_path)
    download(REPO, cache_dir=tmp_path, endpoint=hub.url)
    hub.requests.clear()
    assert not needs_download(REPO, cache_dir=tmp_path)
    assert hub.requests == []


def test_an_interrupted_download_is_not_taken_for_a_cached_model(hub, small_reads, tmp_path):
    download(REPO, cache_dir=tmp_path, endpoint=hub.url)
    pointer = tmp_path / "models--test-org--tiny-weights" / "snapshots" / COMMIT / "model-00002-of-00002.safetensors"
    pointer.resolve().unlink()  # the blob and its link: what a download stopped on the way leaves
    pointer.unlink()
    assert needs_download(REPO, cache_dir=tmp_path)
    hub.requests.clear()
    readings = download_polled(hub, tmp_path)
    assert readings[-1].done == readings[-1].total == len(FILES["model-00002-of-00002.safetensors"])
    assert hub.file_requests() == [f"/{REPO}/resolve/{COMMIT}/model-00002-of-00002.safetensors"]


def test_no_download_for_a_local_directory_a_non_hub_name_or_offline(tmp_path, monkeypatch):
    assert not needs_download(str(tmp_path), cache_dir=tmp_path)
    assert not needs_download("./checkpoints/lychee", cache_dir=tmp_path)
    assert not needs_download("not/a/hub id", cache_dir=tmp_path)
    assert needs_download(REPO, cache_dir=tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert not needs_download(REPO, cache_dir=tmp_path)


def test_a_missing_repo_fails_with_the_hubs_reason(hub, tmp_path):
    with pytest.raises(DownloadError, match="the download from the Hub failed: 404 Client Error. Repository Not Found"):
        download("test-org/no-such-model", cache_dir=tmp_path, endpoint=hub.url)


def test_an_unreachable_hub_fails_with_the_connection_error(tmp_path):
    closed = serve({}, 1.0)
    url = closed.url
    closed.shutdown()
    closed.server_close()
    with pytest.raises(DownloadError, match="Connection refused"):
        download(REPO, cache_dir=tmp_path, endpoint=url)


def test_huggingface_hubs_own_bars_still_print_in_a_terminal(hub, small_reads, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub's switch: bars on without a TTY (pytest has none)
    download(REPO, cache_dir=tmp_path, endpoint=hub.url)
    assert "2.70MB / 2.70MB" in capsys.readouterr().err


def test_without_a_terminal_the_log_gets_a_progress_line_every_few_seconds(hub, small_reads, tmp_path, monkeypatch,
                                                                            caplog):
    monkeypatch.setattr(downloads, "LOG_EVERY_S", 0.3)
    with caplog.at_level(logging.INFO, logger="lychee.download"):
        download(REPO, cache_dir=tmp_path, endpoint=hub.url)
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == f"downloading {REPO}: 2.7 MB in 3 files"
    assert any(re.fullmatch(rf"downloading {REPO}: \d\.\d / 2\.7 MB( · .+/s · \d+ s left)?", line) for line in lines)
    assert re.fullmatch(rf"downloaded {REPO} in \d+ s", lines[-1])


# -- the tracker and the words, pure --------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_speed_is_measured_over_the_recent_window_and_falls_in_a_stall():
    clock = Clock()
    tracker = DownloadTracker(window_s=10, clock=clock)
    assert tracker.progress() == DownloadProgress(0, None, None)
    tracker.plan(16_600_000_000)
    clock.now = 0.5
    tracker.add(1_000_000)
    assert tracker.progress().speed is None  # under a second: one small file is no speed
    clock.now = 50
    tracker.add(2_719_000_000)
    clock.now = 60
    tracker.add(480_000_000)
    progress = tracker.progress()
    assert (progress.done, progress.total, progress.speed) == (3_200_000_000, 16_600_000_000, 48_000_000)
    assert progress.eta_s == pytest.approx(13_400_000_000 / 48_000_000)
    clock.now = 70
    assert tracker.progress().speed == 24_000_000  # nothing for 10 s: half the speed


def test_a_larger_estimate_of_the_total_wins_and_a_dropped_retry_counts_back():
    tracker = DownloadTracker(clock=Clock())
    tracker.plan(100)
    tracker.add(60, total=80)
    tracker.add(-20, total=150)
    assert (tracker.progress().done, tracker.progress().total) == (40, 150)


def test_time_left_needs_a_total_and_a_speed():
    assert DownloadProgress(5).eta_s is None
    assert DownloadProgress(5, 10).eta_s is None
    assert DownloadProgress(5, 10, 0.0).eta_s is None
    assert DownloadProgress(12, 10, 1.0).eta_s == 0


def test_sizes_are_in_decimal_units_with_one_decimal_below_100():
    assert human_amount(3_200_000_000, 16_600_000_000) == "3.2 / 16.6 GB"
    assert human_amount(12_000_000, 350_000_000) == "12 / 350 MB"
    assert human_amount(0, 2_700_002) == "0.0 / 2.7 MB"
    assert human_size(16_583_000_000) == "16.6 GB"
    assert human_size(512) == "512 B"
    assert human_size(0) == "0 B"
    assert human_size(2e15) == "2000 TB"


def test_speeds_have_one_decimal_below_10():
    assert human_speed(48_000_000) == "48 MB/s"
    assert human_speed(4_800_000) == "4.8 MB/s"
    assert human_speed(950) == "950 B/s"


def test_durations_name_their_two_largest_parts_in_either_language():
    assert human_duration(279.2) == "4 min 40 s"
    assert human_duration(40) == "40 s"
    assert human_duration(0.2) == "1 s"
    assert human_duration(3900) == "1 h 5 min"
    assert human_duration(279.2, ("小时", "分", "秒")) == "4 分 40 秒"


@given(st.floats(min_value=0, max_value=3599))
def test_a_duration_under_an_hour_reads_back_as_its_seconds_rounded_up(seconds):
    parts = [int(n) for n in re.findall(r"\d+", human_duration(seconds))]
    minutes, secs = parts if len(parts) == 2 else (0, parts[0])
    assert minutes * 60 + secs == -(-seconds // 1)


@given(st.integers(min_value=1, max_value=10**14), st.floats(min_value=0, max_value=1))
def test_an_amount_reads_back_within_its_rounding(total, fraction):
    done = int(total * fraction)
    match = re.fullmatch(r"([\d.]+) / ([\d.]+) (\w+)", human_amount(done, total))
    scale = 1000 ** ["B", "kB", "MB", "GB", "TB"].index(match[3])
    step = 1 if "." not in match[2] else 0.1
    assert abs(float(match[1]) - done / scale) <= step / 2 + 1e-9
    assert abs(float(match[2]) - total / scale) <= step / 2 + 1e-9


# -- the page's model line -----------------------------------------------------------------------

MODEL = "vec-ai/lychee-rerank-mm"
MIDWAY = DownloadProgress(3_200_000_000, 16_600_000_000, 48_000_000)


def test_the_model_line_shows_bytes_speed_and_time_left_while_downloading():
    assert download_line(MODEL, MIDWAY, "en") == (
        "⏳ Downloading vec-ai/lychee-rerank-mm: 3.2 / 16.6 GB · 48 MB/s · about 4 min 40 s left"
        " — then it loads onto the device; the first request waits for it")
    assert download_line(MODEL, MIDWAY, "zh") == (
        "⏳ 正在下载 vec-ai/lychee-rerank-mm:3.2 / 16.6 GB · 48 MB/s · 约剩 4 分 40 秒"
        " — 下载后加载到设备上;首次请求会等待完成")


def test_the_model_line_shows_bytes_alone_before_the_speed_is_known():
    line = download_line(MODEL, DownloadProgress(0, 16_600_000_000), "en")
    assert line.startswith("⏳ Downloading vec-ai/lychee-rerank-mm: 0.0 / 16.6 GB — then it loads")
    assert "0.0 / 16.6 GB — 下载后" in download_line(MODEL, DownloadProgress(0, 16_600_000_000), "zh")


def test_the_model_line_says_the_download_is_starting_before_its_total_is_known():
    assert download_line(MODEL, DownloadProgress(0), "en").startswith("⏳ Starting to download vec-ai/lychee-rerank-mm")
    assert download_line(MODEL, DownloadProgress(0), "zh").startswith("⏳ 正在准备下载 vec-ai/lychee-rerank-mm")


def test_without_a_download_the_model_line_says_it_is_loading(tmp_path):
    slot = ModelSlot(str(tmp_path), device="cpu")  # a local checkpoint: nothing to download, not started yet
    assert slot.download_progress is None
    assert slot.status_line("en") == f"⏳ Loading model {tmp_path.name} … (the first request waits for it)"
    assert slot.status_line("zh").startswith(f"⏳ 正在加载模型 {tmp_path.name}")


# -- a start of the web's model slot, in a process of its own -------------------------------------

def start(hub: StandInHub, home: Path, model: str) -> list[dict[str, str]]:
    """Run :func:`main` on ``model`` with ``hub`` as the Hub and ``home`` as HF_HOME; the status
    lines it saw, in order, each in both languages."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
           "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_TELEMETRY": "1"}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "LYCHEE_BACKEND"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "tests.test_model_download", model], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def checkpoint_hub(tiny_checkpoint):
    files = {path.name: path.read_bytes() for path in sorted(tiny_checkpoint.iterdir()) if path.is_file()}
    hub = serve({REPO: files}, bytes_per_s=400_000)  # ~1 MB: a few seconds
    yield hub
    hub.shutdown()
    hub.server_close()


def test_a_first_start_shows_the_download_then_loads_and_a_second_downloads_nothing(checkpoint_hub, tmp_path):
    first = start(checkpoint_hub, tmp_path, REPO)
    downloading = [line for line in first if line["en"].startswith(f"⏳ Downloading {REPO}: ")]
    assert len(downloading) >= 3
    assert any(" kB/s · about " in line["en"] and " 秒 — 下载后" in line["zh"] for line in downloading)
    assert first[-2]["en"].startswith(f"⏳ Loading model {REPO}")
    assert first[-1]["en"].startswith(f"✅ Model: {REPO} · backend transformers · device cpu")
    assert len(checkpoint_hub.file_requests()) == len(list(Path(first[-1]["snapshot"]).iterdir()))

    checkpoint_hub.requests.clear()
    second = start(checkpoint_hub, tmp_path, REPO)
    assert [line["en"][:1] for line in second] == ["⏳", "✅"]
    assert "ownload" not in second[0]["en"] and checkpoint_hub.file_requests() == []


def test_a_failed_download_ends_as_model_unavailable_with_its_reason(checkpoint_hub, tmp_path):
    lines = start(checkpoint_hub, tmp_path, "test-org/no-such-model")
    assert lines[-1]["error"] == "model_unavailable"
    assert lines[-1]["en"].startswith("❌ the model 'test-org/no-such-model' could not be loaded: the download "
                                      "from the Hub failed: 404 Client Error. Repository Not Found")
    assert "LYCHEE_MODEL" in lines[-1]["zh"]


def main(model: str) -> None:
    """One start of the web's model slot on ``model``: prints each new status line (both languages)
    as a JSON line until it settles; the last adds the error key or the snapshot folder."""
    huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE = READ_SIZE
    slot = ModelSlot(model, device="cpu", dtype="fp32")
    slot.start_loading()
    last = None
    while True:
        settled = slot.settled
        line = {lang: slot.status_line(lang) for lang in LANGUAGES}
        if settled:
            try:
                slot.get()
                line["snapshot"] = huggingface_hub.snapshot_download(model, local_files_only=True)
            except Exception as exc:  # noqa: BLE001 - the test reads which error it was
                line["error"] = getattr(exc, "key", type(exc).__name__)
        if line != last:
            print(json.dumps(line, ensure_ascii=False), flush=True)
            last = line
        if settled:
            return
        time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1])
