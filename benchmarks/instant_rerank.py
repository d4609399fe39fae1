"""What moving a ranking slider costs after a run: the page's handler for a new threshold
(the stored scores ranked again, everything re-rendered, new downloads written) against
pressing Rerank (the same images scored again by the model), in one run on the same images:

    .venv/bin/python -m benchmarks.instant_rerank --size mid --images 30

Both rows run the web app's own handlers (``RerankDemo.restyle`` and the Rerank path of
``RerankDemo.run``), without a browser: add the page's round trip (a few ms on localhost).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

from lychee.limits import Limits
from lychee.random_checkpoint import build_random_checkpoint
from lychee.web.app import RerankDemo
from lychee.web.model_slot import ModelSlot

from .throughput import synthetic_images


def page_slot(folder: str, size: str, count: int) -> tuple[ModelSlot, list[str]]:
    """A loaded model slot on the ``size`` random checkpoint (CPU, fp32) and ``count`` 1024x768 JPEGs
    of :func:`~benchmarks.throughput.synthetic_images`, all saved under ``folder``: what a page run gets."""
    checkpoint = build_random_checkpoint(Path(folder) / size, size, seed=0)
    paths = []
    for i, image in enumerate(synthetic_images(count, width=1024, height=768)):
        paths.append(str(Path(folder) / f"image{i}.jpg"))
        image.save(paths[-1], quality=90)
    slot = ModelSlot(str(checkpoint), device="cpu", dtype="fp32", limits=Limits(max_images=count))
    slot.get()
    return slot, paths


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=("tiny", "mid"))
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        slot, paths = page_slot(folder, args.size, args.images)
        demo = RerankDemo(slot)
        demo.build()
        values = {demo.lang: "en", demo.images: [(p, None) for p in paths], demo.query: "a gradient under noise",
                  demo.preset: "screening", demo.threshold: 0.0, demo.top_k: 0, demo.instruction: "",
                  demo.normalize: False, demo.tie_epsilon: 0.05, demo.max_side: 1920, demo.reference: None,
                  demo.captions: ""}
        started = time.perf_counter()
        *_, shown = demo.run(values, SimpleNamespace(session_hash="bench"))
        rerank_s = time.perf_counter() - started
        values[demo.shown] = shown[demo.shown]
        scores = sorted(r.score for r in shown[demo.shown].outcome.report.results)
        timings = []
        for i in range(args.repeats):
            values[demo.threshold] = scores[(i * 7) % len(scores)]  # a different cut each time
            started = time.perf_counter()
            updated = demo.restyle(values)
            timings.append(time.perf_counter() - started)
            values[demo.shown] = updated[demo.shown]
    slider_s = statistics.median(timings)
    print(f"{args.images} images, {args.size} random checkpoint, CPU fp32")
    print(f"{'press Rerank (score again)':<34} {rerank_s * 1000:9.1f} ms")
    print(f"{'move the threshold (rank again)':<34} {slider_s * 1000:9.1f} ms  (median of {args.repeats}; "
          f"max {max(timings) * 1000:.1f} ms)")
    print(f"{'ratio':<34} {rerank_s / slider_s:9.0f}x")
    return {"rerank_s": rerank_s, "slider_s": slider_s}


if __name__ == "__main__":
    main(sys.argv[1:])
