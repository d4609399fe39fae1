"""What one occlusion map ("Why this score?") costs against scoring the image once, in one run, on the
same random weights and the same images, vision cache off (every copy goes through the vision tower):

    .venv/bin/python -m benchmarks.explain_cost --size mid --json benchmarks/results/cpu-mid-explain.json

Rows: the sample photo examples/images/cat.jpg as scored (448 x 308 px, 176 visual tokens) and a
1920 x 1080 photo at --visual-tokens. Each row times ``score()`` of the one image and ``explain()``
with the default grid (cells + 1 forward passes, in one batched call), interleaved, best of
--repeats. "batching gain" is (passes x one score) / one map: above 1, the batched copies cost
less per pass than scoring the image alone.

The 7B on a GPU is estimated, not measured: the map's model FLOPs (``benchmarks/flops.py``, the
exact Qwen2.5-VL-7B architecture) at an assumed model FLOPs utilisation of a measured matmul peak
(``--gpu-tflops``, default 800: an H100 in BF16; ``--gpu-mfu``, default 0.5: SPEC section 10's target).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from lychee import LycheeReranker, protocol
from lychee.explain import default_grid
from lychee.random_checkpoint import build_config, build_random_checkpoint, build_tokenizer

from .flops import pair_flops
from .throughput import synthetic_images, write_record

QUERY = "a cat's face, close up"
PHOTO = Path(__file__).resolve().parent.parent / "examples" / "images" / "cat.jpg"
PROMPT_TOKENS = 80  # the lychee prompt around the image, as in benchmarks/flops.py


def best_times(blocks: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` runs of each block, the blocks interleaved."""
    best = {name: float("inf") for name in blocks}
    for _ in range(repeats):
        for name, fn in blocks.items():
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def gpu_estimate(visual_tokens: int, passes: int, tflops: float, mfu: float) -> dict[str, float]:
    """Model FLOPs of a 7B map of ``passes`` passes and its time at ``mfu`` of ``tflops``."""
    per_pass = pair_flops(build_config("7b", build_tokenizer()), visual_tokens, PROMPT_TOKENS)
    return {"tflop_per_pass": per_pass / 1e12, "map_tflop": per_pass * passes / 1e12,
            "score_s": per_pass / (tflops * 1e12 * mfu), "map_s": per_pass * passes / (tflops * 1e12 * mfu)}


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=("tiny", "mid"))
    parser.add_argument("--visual-tokens", type=int, default=1280, help="the budget of the 1080p row")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpu-tflops", type=float, default=800.0)
    parser.add_argument("--gpu-mfu", type=float, default=0.5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    photos = {"cat.jpg (sample photo)": Image.open(PHOTO).convert("RGB"),
              "1920x1080 photo": synthetic_images(1)[0]}
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        path = str(build_random_checkpoint(Path(workdir) / args.size, args.size))
        reranker = LycheeReranker(path, device="cpu", dtype="fp32", batch_size=args.batch_size, vision_cache_bytes=0,
                                  max_pixels=args.visual_tokens * protocol.PATCH_PIXELS ** 2)
        reranker.score(QUERY, [photos["cat.jpg (sample photo)"]])  # warm-up
        for name, photo in photos.items():
            size = reranker.scored_image(photo).size
            rows_cols = default_grid(size)
            passes = rows_cols[0] * rows_cols[1] + 1
            timed = best_times({"score": lambda photo=photo: reranker.score(QUERY, [photo]),
                                "map": lambda photo=photo: reranker.explain(QUERY, photo)}, args.repeats)
            tokens = size[0] * size[1] // protocol.PATCH_PIXELS ** 2
            rows.append({"image": name, "scored_size": list(size), "visual_tokens": tokens, "grid": list(rows_cols),
                         "forward_passes": passes, "score_s": timed["score"], "map_s": timed["map"],
                         "map_vs_score": timed["map"] / timed["score"],
                         "batching_gain": passes * timed["score"] / timed["map"],
                         "gpu_7b_estimate": gpu_estimate(tokens, passes, args.gpu_tflops, args.gpu_mfu)})

    print(f"{args.size} random checkpoint, CPU, fp32, batch size {args.batch_size}, vision cache off, "
          f"best of {args.repeats}")
    print("| image | as scored | visual tokens | grid | passes | one score (s) | one map (s) | map / score "
          "| batching gain | 7B on a GPU, estimated: score / map (s) |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        gpu = r["gpu_7b_estimate"]
        print(f"| {r['image']} | {r['scored_size'][0]}x{r['scored_size'][1]} | {r['visual_tokens']} "
              f"| {r['grid'][0]}x{r['grid'][1]} | {r['forward_passes']} | {r['score_s']:.3f} | {r['map_s']:.2f} "
              f"| {r['map_vs_score']:.1f}x | {r['batching_gain']:.2f}x | {gpu['score_s']:.3f} / {gpu['map_s']:.2f} |")
    per_map = ", ".join(f"{r['gpu_7b_estimate']['map_tflop']:.0f}" for r in rows)
    print(f"7B estimate: the map's model FLOPs ({per_map} TFLOP) at {args.gpu_mfu:.0%} of {args.gpu_tflops:g} "
          "TFLOP/s; arithmetic, not a measurement")
    if args.json:
        write_record(args.json, "explain_cost", argv, rows=rows)
    return rows


if __name__ == "__main__":
    main()
