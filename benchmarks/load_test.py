"""Load test of the web demo's ``/rerank`` queue API: N concurrent ``gradio_client`` clients.

    python -m benchmarks.load_test [--clients 16] [--rounds 3] [--requests 4] [--images 4]
                                   [--queue-size 4] [--size tiny] [--url URL]

Without ``--url`` it saves a random checkpoint (``--size``, default the tiny one), serves
``app.py`` on 127.0.0.1 (a free port) with ``LYCHEE_MODEL`` pointing at it and
``LYCHEE_QUEUE_SIZE=--queue-size``, and stops it at the end: loopback only, bounded in
requests and time. Before the load, each distinct request is sent once alone to record its
expected result. Then, for each round, every client sends ``--requests`` requests back to
back; each request ends as one of:

- ``ok``: the result matches the expected one (same images, same scores within 1e-4);
- ``busy``: refused at once because the queue was full (gradio's "Queue is full");
- ``wrong``: a result that differs from the expected one;
- ``error``: any other failure; ``timeout``: no answer within ``--timeout`` seconds.

Printed per round and in total: requests/s, p50/p95 latency of the accepted requests,
outcomes by kind, and the server's resident memory after the round.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted(str(p) for p in (ROOT / "examples" / "images").glob("*.jpg"))
QUERY = "一只black cat坐在red sofa上"
SCORE_TOLERANCE = 1e-4
KINDS = ("ok", "busy", "wrong", "error", "timeout")


@dataclass(frozen=True)
class Outcome:
    kind: str          # one of KINDS
    latency_s: float
    detail: str = ""


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_app(checkpoint: str | os.PathLike, *, queue_size: int, startup_timeout_s: float = 120.0,
              log_path: str | os.PathLike = os.devnull, environ: Mapping[str, str] | None = None,
              module: str | None = None) -> Iterator[Server]:
    """``python app.py`` (or ``python -m module``) on 127.0.0.1 with the given checkpoint on the
    CPU (unless ``environ``, added last, says otherwise), its output in ``log_path``; stopped on exit."""
    port = free_port()
    settings = {"LYCHEE_MODEL": str(checkpoint), "LYCHEE_DEVICE": "cpu", "LYCHEE_DTYPE": "fp32",
                "LYCHEE_QUEUE_SIZE": str(queue_size), "GRADIO_SERVER_NAME": "127.0.0.1",
                "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
                **(environ or {})}
    command = [sys.executable, *(["-m", module] if module else ["app.py"])]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **settings},
                                   stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, port, process, startup_timeout_s)
        yield Server(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(url: str, port: int, process: subprocess.Popen, timeout_s: float) -> None:
    """Until ``process`` itself listens on ``port`` (not some other server that took the
    port in between) and answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with code {process.returncode} before serving")
        listening = any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                        for c in psutil.Process(process.pid).net_connections("tcp"))
        with contextlib.suppress(httpx.HTTPError):
            if listening and httpx.get(f"{url}/config", timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise TimeoutError(f"the app did not answer on {url} within {timeout_s:.0f} s")


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children, in MB."""
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 1e6


def image_sets(count: int, per_request: int) -> list[list[str]]:
    """``count`` distinct requests, each ``per_request`` sample photos in a different order."""
    return [[SAMPLES[(start + i) % len(SAMPLES)] for i in range(per_request)] for start in range(count)]


def _call(client: Any, images: Sequence[str], timeout_s: float) -> dict[str, Any]:
    from gradio_client import handle_file

    job = client.submit(QUERY, [handle_file(p) for p in images], "", None, None, "", False, 0.05, 1920, None,
                        api_name="/rerank")
    try:
        return job.result(timeout=timeout_s)
    except TimeoutError:
        job.cancel()
        raise


def _scores(result: dict[str, Any]) -> dict[int, float]:
    return {r["index"]: r["raw_score"] for group in ("results", "filtered_out", "errors") for r in result[group]}


def matches(result: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Same images, same records, same scores (within SCORE_TOLERANCE)."""
    got, want = _scores(result), _scores(expected)
    return (result["counts"] == expected["counts"] and got.keys() == want.keys()
            and all(abs(got[i] - want[i]) <= SCORE_TOLERANCE for i in want))


def expected_results(url: str, requests: Sequence[Sequence[str]], timeout_s: float) -> list[dict[str, Any]]:
    """Each distinct request sent once, alone: what every later answer must equal."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    return [_call(client, images, timeout_s) for images in requests]


def one_request(client: Any, images: Sequence[str], expected: dict[str, Any], timeout_s: float) -> Outcome:
    from gradio_client.utils import QueueError

    started = time.perf_counter()
    try:
        result = _call(client, images, timeout_s)
    except QueueError as exc:
        return Outcome("busy", time.perf_counter() - started, str(exc))
    except TimeoutError:
        return Outcome("timeout", time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - every other failure is counted, by its message
        return Outcome("error", time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
    return Outcome("ok" if matches(result, expected) else "wrong", time.perf_counter() - started)


def run_round(url: str, *, clients: int, requests: int, sets: Sequence[Sequence[str]],
              expected: Sequence[dict[str, Any]], timeout_s: float) -> tuple[list[Outcome], float]:
    """``clients`` threads, each with its own client, released together, ``requests`` each.

    Returns the outcomes and the seconds from the release to the last answer (connecting
    and closing the clients is not counted).
    """
    from gradio_client import Client

    release = threading.Barrier(clients + 1)

    def work(number: int) -> list[Outcome]:
        release.wait()
        picks = [(number + i) % len(sets) for i in range(requests)]
        return [one_request(connected[number], sets[k], expected[k], timeout_s) for k in picks]

    with ThreadPoolExecutor(clients) as pool:
        connected = list(pool.map(lambda _: Client(url, verbose=False), range(clients)))
        futures = [pool.submit(work, number) for number in range(clients)]
        release.wait()
        started = time.perf_counter()
        outcomes = [outcome for future in futures for outcome in future.result()]
        elapsed = time.perf_counter() - started
        list(pool.map(lambda client: client.close(), connected))  # each waits up to 1 s for its heartbeat
    return outcomes, elapsed


def summarize(outcomes: Sequence[Outcome], elapsed_s: float) -> dict[str, Any]:
    """requests/s (all answered requests), accepted/s, p50/p95 latency of accepted ones, kinds."""
    accepted = sorted(o.latency_s for o in outcomes if o.kind == "ok")
    kinds = Counter(o.kind for o in outcomes)
    return {
        "requests": len(outcomes),
        "elapsed_s": elapsed_s,
        "requests_per_s": len(outcomes) / elapsed_s,
        "accepted_per_s": len(accepted) / elapsed_s,
        "p50_s": statistics.median(accepted) if accepted else None,
        "p95_s": accepted[min(len(accepted) - 1, round(0.95 * (len(accepted) - 1)))] if accepted else None,
        "kinds": {kind: kinds.get(kind, 0) for kind in KINDS},
        "details": Counter(o.detail for o in outcomes if o.kind not in ("ok", "busy")),
    }


def _line(label: str, summary: dict[str, Any], rss: float | None) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    kinds = " ".join(f"{k}={v}" for k, v in summary["kinds"].items())
    memory = "" if rss is None else f"  server RSS {rss:.0f} MB"
    return (f"{label:<8}{summary['requests']:>5} requests  {summary['requests_per_s']:6.1f} req/s  "
            f"{summary['accepted_per_s']:6.1f} accepted/s  p50 {ms(summary['p50_s'])}  p95 {ms(summary['p95_s'])}"
            f"  {kinds}{memory}")


@dataclass(frozen=True)
class Round:
    outcomes: list[Outcome]
    summary: dict[str, Any]
    rss_mb: float | None  # the server's, after the round (None when it is not ours to read)


def load_test(url: str, *, pid: int | None, clients: int, rounds: int, requests: int, images: int,
              timeout_s: float, out: TextIO = sys.stdout) -> list[Round]:
    """Run the rounds, printing one line each and then the total."""
    sets = image_sets(min(clients, len(SAMPLES)), images)
    expected = expected_results(url, sets, timeout_s)
    memory = f"; server RSS after warm-up {rss_mb(pid):.0f} MB" if pid else ""
    print(f"{clients} clients x {requests} requests x {rounds} rounds, {images} images per request{memory}", file=out)
    done: list[Round] = []
    for number in range(1, rounds + 1):
        outcomes, elapsed = run_round(url, clients=clients, requests=requests, sets=sets, expected=expected,
                                      timeout_s=timeout_s)
        done.append(Round(outcomes, summarize(outcomes, elapsed), rss_mb(pid) if pid else None))
        print(_line(f"round {number}", done[-1].summary, done[-1].rss_mb), file=out)
    total = summarize([o for r in done for o in r.outcomes], sum(r.summary["elapsed_s"] for r in done))
    print(_line("total", total, None), file=out)
    for detail, count in total["details"].items():
        print(f"  {count} x {detail}", file=out)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=4, help="requests per client per round")
    parser.add_argument("--images", type=int, default=4, help="images per request")
    parser.add_argument("--queue-size", type=int, default=4, help="LYCHEE_QUEUE_SIZE of the served app")
    parser.add_argument("--size", default="tiny", choices=("tiny", "mid"), help="random checkpoint to serve")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take")
    parser.add_argument("--url", help="load an app that is already running instead (its memory is not read)")
    parser.add_argument("--server-log", default=os.devnull, help="where the served app's output goes")
    args = parser.parse_args(argv)
    run = {"clients": args.clients, "rounds": args.rounds, "requests": args.requests, "images": args.images,
           "timeout_s": args.timeout}
    if args.url:
        load_test(args.url, pid=None, **run)
        return 0
    from lychee.random_checkpoint import build_random_checkpoint

    with tempfile.TemporaryDirectory(prefix="lychee-load-") as folder:
        checkpoint = build_random_checkpoint(folder, args.size, seed=0)
        with serve_app(checkpoint, queue_size=args.queue_size, log_path=args.server_log) as server:
            print(f"serving {args.size} random checkpoint at {server.url}, queue size {args.queue_size}")
            load_test(server.url, pid=server.pid, **run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
