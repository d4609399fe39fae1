"""What running an image query's shared prefix once per request saves: the same request scored with
every row's full prompt (the reference image's ~1,200 tokens through the language model in every row)
and with the prefix run once and each row's rest attending to its keys and values. One run, the same
random weights, the same candidates, vision cache off, side by side in fp32 and bf16:

    .venv/bin/python -m benchmarks.shared_prefix --size mid --json benchmarks/results/cpu-mid-shared-prefix.json
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lychee import LycheeReranker
from lychee.random_checkpoint import build_random_checkpoint

from .batching import MIXED_SIZES, mixed_images
from .image_query import best_time
from .throughput import write_record

QUERY = "the same cup, but on a wooden table"


def reference_photo(seed: int = 1) -> Image.Image:
    """A 1920x1080 reference image (noise: every patch differs, as in a photo)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=("tiny", "mid"))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--sizes", default=MIXED_SIZES, help="candidate sizes WxH,... used in turn")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]
    images, reference = mixed_images(args.images, sizes), reference_photo()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        path = str(build_random_checkpoint(Path(workdir) / args.size, args.size))
        for dtype in args.dtypes.split(","):
            reranker = LycheeReranker(path, device="cpu", dtype=dtype, vision_cache_bytes=0)

            def run(share: bool, reranker: LycheeReranker = reranker) -> list[float]:
                reranker.backend.share_prefix = share
                return [r.raw_score for r in reranker.score(QUERY, images, query_image=reference)]

            run(True)  # warm-up
            full_s, full = best_time(lambda: run(False), args.repeats)
            shared_s, shared = best_time(lambda: run(True), args.repeats)
            rows.append({"dtype": dtype, "full_rows_s": full_s, "shared_prefix_s": shared_s,
                         "speedup": full_s / shared_s,
                         "max_abs_score_diff": max(abs(a - b) for a, b in zip(full, shared))})
    print(f"{args.size} random checkpoint, an image+text query with a 1920x1080 reference, {args.images} candidates "
          f"({args.sizes}), the model card's pixel budget, CPU, vision cache off")
    print(f"{'dtype':<7}{'full rows s':>13}{'shared prefix s':>17}{'speed-up':>10}{'max |Δscore|':>14}")
    for row in rows:
        print(f"{row['dtype']:<7}{row['full_rows_s']:>13.2f}{row['shared_prefix_s']:>17.2f}{row['speedup']:>9.2f}x"
              f"{row['max_abs_score_diff']:>14.2e}")
    if args.json:
        write_record(args.json, "shared_prefix", argv, rows=rows)
    return rows


if __name__ == "__main__":
    main()
