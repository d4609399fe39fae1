"""Bytes on the wire and request time of the vllm-server backend against a local vLLM server.

Starts ``python -m lychee vllm-serve`` on a random checkpoint (``tiny32`` by default: vLLM's CPU
attention takes heads of 32) on 127.0.0.1, then times ``rerank()`` through the server on the
mixed-size set of ``benchmarks/batching.py``, in rounds, two ways in turn: the images as lychee
sends them - resized once to the pixel budget's size - and, for comparison, the images as they
were sent before, capped at 1920 px and left for the server to shrink (``--as-decoded``). Prints
bytes per pair (the JSON body of each ``/classify`` request), seconds per request and the
largest score difference between the two. Run it in the venv that has vLLM:

    VLLM_CPU_KVCACHE_SPACE=2 PYTHONPATH=. .venv-vllm/bin/python -m benchmarks.vllm_wire --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from json import dumps
from pathlib import Path

import httpx
from PIL import Image

from lychee import protocol
from lychee.backends import vllm_server
from lychee.backends.vllm_server import VllmServerBackend
from lychee.random_checkpoint import build_random_checkpoint

from .batching import MIXED_SIZES, QUERY, mixed_images
from .load_test import free_port

SERVER_START_S = 600
AFTER, BEFORE = "budget-sized (lychee resizes once)", "as decoded, <= 1920 px (the server resizes)"
WAYS = (AFTER, BEFORE)


def start_server(checkpoint: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = log_path.open("w")
    server = subprocess.Popen([sys.executable, "-m", "lychee", "vllm-serve", checkpoint, "--host", "127.0.0.1",
                               "--port", str(port), "--dtype", "float32", "--enforce-eager"],
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the vLLM server did not start; see {log_path}")
        time.sleep(0.5)


def counting(backend: VllmServerBackend, sizes: list[int]) -> None:
    """Note the size of every request body ``backend``'s client sends."""
    post = backend.client.post

    def counted(url: str, *, json: dict, **kwargs: object) -> httpx.Response:
        sizes.append(len(dumps(json)))
        return post(url, json=json, **kwargs)

    backend.client.post = counted


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vllm_wire", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny32", choices=("tiny32", "mid"))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--sizes", default=MIXED_SIZES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]
    images = mixed_images(args.images, sizes)
    with tempfile.TemporaryDirectory() as workdir:
        checkpoint = str(build_random_checkpoint(Path(workdir) / args.size, args.size))
        server, url = start_server(checkpoint, Path(workdir) / "server.log")
        try:
            result = run(url, images, args.rounds)
        finally:
            server.terminate()
            server.wait(60)
    print(f"vLLM server ({args.size}) on 127.0.0.1, {len(images)} images of {args.sizes}, {args.rounds} rounds")
    print(f"max |Δscore| between the two ways (0-10): {result['max_abs_diff']:.1e}")
    print("| images sent | bytes per pair (mean) | seconds per pair (median of rounds) | min-max |")
    print("|---|---:|---:|---:|")
    for way in WAYS:
        entry = result[way]
        print(f"| {way} | {entry['bytes_per_pair'] / 1e6:.2f} MB | {entry['seconds_median']:.3f} | "
              f"{entry['seconds_min']:.3f}-{entry['seconds_max']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def run(url: str, images: list[Image.Image], rounds: int) -> dict:
    """Both ways in turn, ``rounds`` times after one warm-up round, on one server and one pixel budget."""
    messages = protocol.rerank_messages(QUERY)
    backends = {way: VllmServerBackend(url) for way in WAYS}
    bodies: dict[str, list[int]] = {way: [] for way in WAYS}
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    scores: dict[str, list[float]] = {}
    for way, backend in backends.items():
        counting(backend, bodies[way])
    for round_ in range(rounds + 1):
        for way, backend in backends.items():
            with as_decoded() if way == BEFORE else contextlib.nullcontext():
                started = time.perf_counter()
                scores[way] = backend.relevance(messages, images)
                elapsed = time.perf_counter() - started
            if round_:
                seconds[way].append(elapsed / len(images))
    result: dict = {way: {"bytes_per_pair": statistics.mean(bodies[way]),
                          "seconds_median": statistics.median(seconds[way]), "seconds_min": min(seconds[way]),
                          "seconds_max": max(seconds[way])} for way in WAYS}
    result["max_abs_diff"] = 10 * max(abs(a - b) for a, b in zip(*(scores[way] for way in WAYS)))
    return result


@contextlib.contextmanager
def as_decoded() -> Iterator[None]:
    """The client as it was: images sent as decoded (<= 1920 px), for the server to shrink."""
    sized = vllm_server.budget_sized
    vllm_server.budget_sized = lambda backend, images: list(images)
    try:
        yield
    finally:
        vllm_server.budget_sized = sized


if __name__ == "__main__":
    main()
