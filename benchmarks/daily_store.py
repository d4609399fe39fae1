"""A daily run with the score store: 1,000 images of which 50 are new, against a full run, side by side.

    python -m benchmarks.daily_store [--images 1000] [--new 50] [--checkpoint tiny]

Both runs go through ``cli.score_in_chunks`` on one loaded reranker (CPU, fp32, a random
checkpoint from :mod:`lychee.random_checkpoint`): the full run without a store, the daily run
with a store that already holds the 950 old images' scores. Prints both times and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lychee import LycheeReranker
from lychee.cli import score_in_chunks
from lychee.limits import Limits
from lychee.random_checkpoint import build_random_checkpoint
from lychee.request import build_request
from lychee.settings import resolve_settings
from lychee.store import SqliteStore
from tests.conftest import make_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--new", type=int, default=50)
    parser.add_argument("--checkpoint", default="tiny")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = build_random_checkpoint(root / "model", args.checkpoint, seed=0)
        paths = []
        for i in range(args.images):
            path = root / f"img{i:05d}.png"
            path.write_bytes(make_image(160 + i % 97, 120 + i % 61, (i * 7 % 256, i * 13 % 256, 200)))
            paths.append(str(path))
        limits = Limits(max_images=max(args.images, 200))
        request = build_request("a red square on a white table", resolve_settings(None), limits)
        plain = LycheeReranker(str(checkpoint), device="cpu", dtype="fp32", limits=limits, vision_cache_bytes=0)
        store = SqliteStore(root / "scores.sqlite")
        stored = LycheeReranker(backend=plain.backend, limits=limits, store=store)
        score_in_chunks(stored, request, paths[:args.images - args.new])  # yesterday's images, in the store

        started = time.perf_counter()
        full = score_in_chunks(plain, request, paths)
        full_s = time.perf_counter() - started
        started = time.perf_counter()
        daily = score_in_chunks(stored, request, paths)
        daily_s = time.perf_counter() - started
        scored = sum(r.scored_by == "model" for r in daily)
        same = max(abs(a.raw_score - b.raw_score) for a, b in zip(full, daily))
        print(f"checkpoint {args.checkpoint}, CPU fp32, {args.images} images, {args.new} new")
        print(f"full run (no store):        {full_s:7.2f} s, {args.images} scored")
        print(f"daily run (store):          {daily_s:7.2f} s, {scored} scored, {args.images - scored} from the store")
        print(f"daily / full:               {daily_s / full_s:7.1%}")
        print(f"max |score difference|:     {same:.2e} (0-10 scale)")


if __name__ == "__main__":
    main()
