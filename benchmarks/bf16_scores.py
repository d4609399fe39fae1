"""Do bf16 scores depend on the batch? Our head (z_yes - z_no as one fp32 dot product of the
last hidden state with ``lm_head[yes] - lm_head[no]``) against the logits head it replaced
(the full vocabulary projection in the model's dtype, then the two logits subtracted), side by
side in one run, on the same random weights and images.

    .venv/bin/python -m benchmarks.bf16_scores --size mid --json benchmarks/results/cpu-mid-bf16.json

For each head and dtype it prints the largest |batched - one by one| score difference (0-10
scale), the largest difference from the same head in fp32, and how many distinct scores the
images got (quantisation shows as repeats).

A trained model's "yes" and "no" logits are both large (tens) while their difference is a few
units; a random model's are small, which hides the rounding. ``--common-logit C`` (default 25)
adds the same vector to both lm_head rows so that both logits are about C for these images:
the difference, and so every fp32 score, is unchanged, but bf16 logits now round as a trained
model's do (steps of 0.125 near 25). ``--common-logit 0`` runs the random weights as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageOps

from lychee import LycheeReranker, protocol
from lychee.backends.base import run_batched
from lychee.backends.packing import Budget
from lychee.backends.transformers import Engine
from lychee.random_checkpoint import build_random_checkpoint

from .throughput import write_record

QUERY = "a black cat sitting on a red sofa"
SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
Head = Callable[[Engine, str, list[Image.Image]], list[float]]


def photos() -> list[Image.Image]:
    """The sample photos and their mirror images: 12 different pictures of mixed sizes."""
    originals = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    return originals + [ImageOps.mirror(image.resize((image.width // 2, image.height))) for image in originals]


@torch.inference_mode()
def with_common_logit(engine: Engine, images: list[Image.Image], target: float) -> Engine:
    """``engine`` with ``target`` / |m|^2 * m added to the yes and no rows of lm_head, m being the
    mean last hidden state over ``images``: both logits rise by about ``target``, their difference stays."""
    if not target:
        return engine
    prompt = engine.render(protocol.rerank_messages(QUERY))
    inputs = engine._inputs(prompt, images)
    mean = engine.model.model(**inputs).last_hidden_state[:, -1].float().mean(dim=0)
    shift = (target / mean.dot(mean)) * mean
    rows = engine.model.get_output_embeddings().weight
    for token in (engine.yes_id, engine.no_id):
        rows[token] += shift.to(rows.dtype)
    return dataclasses.replace(engine, yes_minus_no=rows[engine.yes_id].float() - rows[engine.no_id].float())


def hidden_state_head(engine: Engine, prompt: str, images: list[Image.Image]) -> list[float]:
    """Ours: fp32 dot product of the last hidden state with lm_head[yes] - lm_head[no]."""
    return (10 * engine.relevance_logits(prompt, images).sigmoid()).tolist()


@torch.inference_mode()
def logits_head(engine: Engine, prompt: str, images: list[Image.Image]) -> list[float]:
    """Before: the vocabulary logits in the model's dtype, then z_yes - z_no."""
    logits = engine.model(**engine._inputs(prompt, images), logits_to_keep=1).logits[:, -1]  # [n, vocab]
    return (10 * (logits[:, engine.yes_id] - logits[:, engine.no_id]).float().sigmoid()).tolist()


HEADS: dict[str, Head] = {"hidden state, fp32 dot (ours)": hidden_state_head, "vocabulary logits (before)": logits_head}


def scores(engine: Engine, head: Head, images: Sequence[Image.Image], batch_size: int) -> list[float]:
    prompt = engine.render(protocol.rerank_messages(QUERY))
    return run_batched(list(images), lambda batch: head(engine, prompt, batch),
                       budget=Budget(rows=batch_size, max_padding=math.inf), cost=engine.visual_tokens)


def max_diff(a: Sequence[float], b: Sequence[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=("tiny", "mid"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--common-logit", type=float, default=25.0,
                        help="raise both the yes and no logits by about this much (0: the random weights as they are)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    images = photos()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        path = str(build_random_checkpoint(Path(workdir) / args.size, args.size))
        loaded = {dtype: LycheeReranker(path, device="cpu", dtype=dtype, vision_cache_bytes=0).backend.engine
                  for dtype in ("fp32", "bf16")}
        engines = {dtype: with_common_logit(engine, images, args.common_logit) for dtype, engine in loaded.items()}
        for name, head in HEADS.items():
            fp32 = scores(engines["fp32"], head, images, args.batch_size)
            for dtype, engine in engines.items():
                batched = scores(engine, head, images, args.batch_size)
                single = scores(engine, head, images, 1)
                rows.append({"head": name, "dtype": dtype, "batched_vs_single": max_diff(batched, single),
                             "vs_fp32": max_diff(batched, fp32), "distinct_scores": len(set(batched)),
                             "images": len(images), "score_range": [min(batched), max(batched)]})

    print(f"{args.size} random checkpoint, {len(images)} photos, batch size {args.batch_size}, "
          f"common logit {args.common_logit:g}, CPU")
    print(f"{'head':<32}{'dtype':<7}{'batched vs single':>18}{'vs fp32':>10}{'distinct':>10}  score range")
    for row in rows:
        low, high = row["score_range"]
        print(f"{row['head']:<32}{row['dtype']:<7}{row['batched_vs_single']:>18.4f}{row['vs_fp32']:>10.4f}"
              f"{row['distinct_scores']:>6}/{row['images']:<3}  {low:.2f}-{high:.2f}")
    if args.json:
        write_record(args.json, "bf16_scores", argv, size=args.size, common_logit=args.common_logit, rows=rows)
    return rows


if __name__ == "__main__":
    main()
