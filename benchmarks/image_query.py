"""What an image query costs against a text query over the same candidates, and what encoding
the query image once per request (ours) saves over encoding it with every pair. One run, the
same random weights, the same 32 candidates, vision cache off (every candidate is encoded):

    .venv/bin/python -m benchmarks.image_query --size mid --json benchmarks/results/cpu-mid-image-query.json

Rows: a text query; an image query (the query image through the vision tower once); the same
image query with the query image encoded again for every pair, as a per-pair loop would.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from lychee import LycheeReranker, protocol
from lychee.backends.base import run_batched
from lychee.backends.packing import Budget
from lychee.backends.transformers import Engine
from lychee.random_checkpoint import build_random_checkpoint

from .throughput import synthetic_images, write_record

QUERY = "a cup of coffee on a saucer"
REFERENCE = Path(__file__).resolve().parent.parent / "examples" / "images" / "coffee.jpg"


def image_query_per_pair(engine: Engine, images: Sequence[Image.Image], reference: Image.Image,
                         batch_size: int) -> list[float]:
    """The image query with the query image encoded again for every pair (the cost we avoid)."""
    prompt = engine.render(protocol.rerank_messages("", query_image=True))

    def batch(candidates: list[Image.Image]) -> list[float]:
        scores = []
        for candidate in candidates:
            query = engine._encode([reference])[0]
            scores.append(10 * float(engine.relevance_logits(prompt, [candidate], query).sigmoid()))
        return scores

    return run_batched(list(images), batch, budget=Budget(rows=batch_size, max_padding=math.inf),
                       cost=engine.visual_tokens)


def best_time(fn: Callable[[], list[float]], repeats: int) -> tuple[float, list[float]]:
    best, result = float("inf"), []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=("tiny", "mid"))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--visual-tokens", type=int, default=256, help="max visual tokens per image")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    images = synthetic_images(args.images)
    reference = Image.open(REFERENCE).convert("RGB")
    with tempfile.TemporaryDirectory() as workdir:
        path = str(build_random_checkpoint(Path(workdir) / args.size, args.size))
        reranker = LycheeReranker(path, device="cpu", dtype="fp32", batch_size=args.batch_size, vision_cache_bytes=0,
                                  max_pixels=args.visual_tokens * protocol.PATCH_PIXELS ** 2)
        engine = reranker.backend.engine
        blocks = {
            "text query": lambda: [r.raw_score for r in reranker.score(QUERY, images)],
            "image query, query image encoded once": lambda: [
                r.raw_score for r in reranker.score("", images, query_image=reference)],
            "image query, query image encoded per pair": lambda: image_query_per_pair(
                engine, images, reference, args.batch_size),
        }
        blocks["text query"]()  # warm-up
        timed = {name: best_time(fn, args.repeats) for name, fn in blocks.items()}

    once = timed["image query, query image encoded once"]
    rows = [{"query": name, "seconds": seconds, "images_per_s": args.images / seconds,
             "vs_once": seconds / once[0]} for name, (seconds, _) in timed.items()]
    difference = max(abs(a - b) for a, b in zip(once[1], timed["image query, query image encoded per pair"][1]))
    print(f"{args.size} random checkpoint, {args.images} candidates of 1920x1080 and a 512x512 query image, "
          f"<= {args.visual_tokens} visual tokens each, batch size {args.batch_size}, CPU, vision cache off")
    print(f"{'query':<44}{'seconds':>9}{'images/s':>10}{'time vs encoded once':>22}")
    for row in rows:
        print(f"{row['query']:<44}{row['seconds']:>9.2f}{row['images_per_s']:>10.2f}{row['vs_once']:>21.2f}x")
    print(f"max |Δscore| between encoding the query image once and per pair: {difference:.2e}")
    if args.json:
        write_record(args.json, "image_query", argv, rows=rows, max_abs_score_diff=difference)
    return rows


if __name__ == "__main__":
    main()
