"""How often the page's progress moves: the stage reports of one web run (decoding, then scoring)
on the CPU, timed from the start, as the page's model slot sends them to its progress bar:

    .venv/bin/python -m benchmarks.progress_cadence --size mid --images 30

Prints the time of each stage's first and last report and the gaps between reports (median
and largest): a bar that waits for a whole batch shows long gaps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

from lychee.web.service import Form, accept

from .instant_rerank import page_slot


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=("tiny", "mid"))
    parser.add_argument("--images", type=int, default=30)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        slot, paths = page_slot(folder, args.size, args.images)
        job = accept(Form("a gradient under noise"), paths, slot.limits)
        reports: list[tuple[float, str, int]] = []
        started = time.perf_counter()
        slot.score(job, progress=lambda stage, done, _: reports.append((time.perf_counter() - started, stage, done)))
        total_s = time.perf_counter() - started

    print(f"{args.images} images, {args.size} random checkpoint, CPU fp32: {total_s:.2f} s")
    figures = {"total_s": total_s}
    for stage in dict.fromkeys(stage for _, stage, _ in reports):
        times = [t for t, s, done in reports if s == stage and done > 0]
        gaps = [b - a for a, b in zip(times, times[1:])]
        print(f"{stage:<9} {len(times):3d} reports  first {times[0]:6.2f} s  last {times[-1]:6.2f} s  "
              f"gap median {statistics.median(gaps) if gaps else 0:5.2f} s  max {max(gaps, default=0):5.2f} s")
        figures |= {f"{stage}_first_s": times[0], f"{stage}_gap_max_s": max(gaps, default=0.0)}
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
