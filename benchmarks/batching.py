"""``rerank()`` against the model card's one-pair loop on images of mixed sizes, at each batch setting.

One process, the same random weights (``mid`` by default, its yes/no head widened so that p(yes)
spreads over the scale), the same seeded synthetic images - four each of 640x480, 300x900,
1024x768 and 1920x1080 in a shuffled order - and the model card's pixel budget (1280 visual
tokens) on both sides. Every round runs the card loop and each setting once, in an order that
rotates from round to round, so a busy spell on a shared machine is spread over all of them; the
ratio of each setting is taken against the card loop of the same round, and the median, minimum
and maximum over the rounds are printed, with the padding waste (padded / real tokens of the
language model's batches), the rows per batch and the peak memory.

    python -m benchmarks.batching --rounds 5
    python -m benchmarks.batching --size 7b --device cuda --dtype bf16 --images 100 --rounds 2

Results and how to read them: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lychee import LycheeReranker, protocol
from lychee.backends.transformers import Engine, TransformersBackend, resolve_device, resolve_dtype

from .throughput import (
    CLOCKS,
    PIXELS_PER_VISUAL_TOKEN,
    build_engine,
    machine_name,
    measure,
    reference_scores,
    synthetic_images,
)

QUERY = "a red car parked on a wet city street at night"
MIXED_SIZES = "640x480,300x900,1024x768,1920x1080"


def mixed_images(count: int, sizes: Sequence[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    """``count`` seeded images cycling through ``sizes``, shuffled so that no batch is sorted by chance."""
    images = [synthetic_images(1, width=w, height=h, seed=seed + i)[0]
              for i, (w, h) in zip(range(count), [sizes[i % len(sizes)] for i in range(count)])]
    random.Random(seed).shuffle(images)
    return images


def spread_yes_no(engine: Engine, factor: float) -> Engine:
    """The engine with ``lm_head[yes] - lm_head[no]`` scaled by ``factor`` (both rows moved about their
    mean), so that random weights give p(yes) across the scale instead of near 0.5. Both paths read
    the same head, so the card loop sees the same model."""
    head = engine.model.get_output_embeddings().weight
    with torch.no_grad():
        yes, no = head[engine.yes_id].clone(), head[engine.no_id].clone()
        middle, half = (yes + no) / 2, (yes - no) / 2 * factor
        head[engine.yes_id], head[engine.no_id] = middle + half, middle - half
    return dataclasses.replace(engine, yes_minus_no=(head[engine.yes_id].float() - head[engine.no_id].float()))


def card_loop(engine: Engine, images: Sequence[Image.Image], max_pixels: int) -> list[float]:
    """The model card's usage, one pair per forward pass (``throughput.reference_scores``), under the pixel budget."""
    return reference_scores(engine, QUERY, images, {"shortest_edge": protocol.MIN_PIXELS, "longest_edge": max_pixels})


@dataclasses.dataclass
class BatchLog:
    """The language model's batches of one run: rows, and real and padded tokens."""

    rows: list[int] = dataclasses.field(default_factory=list)
    real: int = 0
    padded: int = 0


def logged(engine: Engine, log: BatchLog) -> Engine:
    """A copy of ``engine`` that records the shape of every batch it scores."""
    text_tokens = len(engine.processor.tokenizer(engine.render(protocol.rerank_messages(QUERY)))["input_ids"]) - 1
    copy = dataclasses.replace(engine)
    score = copy.relevance_logits

    def relevance_logits(prompt: str, images: Sequence[Image.Image], query: Any = None,
                         prefix: Any = None) -> torch.Tensor:
        lengths = [text_tokens + engine.visual_tokens(image) for image in images]
        log.rows.append(len(lengths))
        log.real += sum(lengths)
        log.padded += len(lengths) * max(lengths) - sum(lengths)
        return score(prompt, images, query, prefix)

    copy.relevance_logits = relevance_logits  # type: ignore[method-assign]
    return copy


def settings_of(text: str) -> list[int | None]:
    """``auto,1,2`` -> [None, 1, 2] (None: the batch the code picks by itself)."""
    return [None if part.strip() == "auto" else int(part) for part in text.split(",") if part.strip()]


def run(args: argparse.Namespace, workdir: Path) -> dict:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    max_pixels = args.visual_tokens * PIXELS_PER_VISUAL_TOKEN
    engine = spread_yes_no(build_engine(args.size, device, dtype, workdir), args.spread)
    engine = dataclasses.replace(engine, max_pixels=max_pixels)
    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]
    images = mixed_images(args.images, sizes, args.seed)

    logs = {setting: BatchLog() for setting in args.settings}
    rerankers = {setting: LycheeReranker(backend=TransformersBackend(logged(engine, logs[setting]), setting))
                 for setting in args.settings}

    def ours(setting: int | None) -> list[float]:
        engine.vision_cache.clear()  # a first query: every image through the vision tower
        by_index = {r.index: r.score for r in rerankers[setting].rerank(QUERY, images)}
        return [by_index[i] for i in range(len(images))]

    blocks: dict[str, Callable[[], list[float]]] = {"card": lambda: card_loop(engine, images, max_pixels)}
    blocks |= {f"batch {setting or 'auto'}": (lambda s=setting: ours(s)) for setting in args.settings}
    card_loop(engine, images[:2], max_pixels)  # warm-up of both paths
    for setting in args.settings:
        rerankers[setting].rerank(QUERY, images[:2])
    for log in logs.values():
        log.__init__()

    names = list(blocks)
    seconds: dict[str, dict[str, list[float]]] = {clock: {name: [] for name in names} for clock in CLOCKS}
    peaks: dict[str, int] = dict.fromkeys(names, 0)
    scores: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            timed = measure(device, lambda name=name: cpu_timed(blocks[name]))
            scores[name], cpu_seconds = timed.result
            seconds["wall"][name].append(timed.seconds)
            seconds["cpu"][name].append(cpu_seconds)
            peaks[name] = max(peaks[name], timed.peak_bytes)

    out: dict[str, Any] = {"images": len(images), "settings": [], **{
        f"card_{clock}": {"images_per_s": len(images) / min(runs["card"]),
                          "slowest_over_fastest": max(runs["card"]) / min(runs["card"])}
        for clock, runs in seconds.items()}}
    for setting in args.settings:
        name = f"batch {setting or 'auto'}"
        log = logs[setting]
        entry: dict[str, Any] = {
            "setting": setting or "auto", "rows_per_batch": sorted(set(log.rows)),
            "batches_per_run": len(log.rows) / args.rounds, "padding": log.padded / log.real,
            "peak_bytes": peaks[name], "card_peak_bytes": peaks["card"],
            "max_abs_diff_vs_card": max(abs(a - b) for a, b in zip(scores[name], scores["card"]))}
        for clock, runs in seconds.items():
            ratios = [c / s for c, s in zip(runs["card"], runs[name])]
            entry[clock] = {"images_per_s": len(images) / min(runs[name]), "ratio_median": statistics.median(ratios),
                            "ratio_min": min(ratios), "ratio_max": max(ratios),
                            "ratio_of_bests": min(runs["card"]) / min(runs[name])}
        out["settings"].append(entry)
    return out


def cpu_timed(fn: Callable[[], list[float]]) -> tuple[list[float], float]:
    """``fn()`` and this process's CPU seconds for it (not stretched by other jobs' turns on the cores)."""
    started = time.process_time()
    result = fn()
    return result, time.process_time() - started


def print_table(result: dict) -> None:
    """One markdown row per batch setting: ratios in wall-clock and in CPU time."""
    for clock in CLOCKS:
        card = result[f"card_{clock}"]
        print(f"card loop, {clock} clock: {card['images_per_s']:.2f} images/s (best round); its slowest round "
              f"took {card['slowest_over_fastest']:.2f}x its fastest")
    header = ["batch", "rows per batch", "batches", "padded / real tokens"]
    header += [f"{label}, {clock}" for clock in CLOCKS
               for label in ("img/s", "ratio median", "ratio min-max", "ratio of bests")]
    header += ["peak (GiB)", "card peak (GiB)", "max \\|Δscore\\| vs card"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    for s in result["settings"]:
        row = [s["setting"], ",".join(map(str, s["rows_per_batch"])), f"{s['batches_per_run']:.0f}",
               f"{s['padding']:.1%}"]
        for clock in CLOCKS:
            t = s[clock]
            row += [f"{t['images_per_s']:.2f}", f"{t['ratio_median']:.2f}x",
                    f"{t['ratio_min']:.2f}-{t['ratio_max']:.2f}x", f"{t['ratio_of_bests']:.2f}x"]
        row += [f"{s['peak_bytes'] / 2**30:.2f}", f"{s['card_peak_bytes'] / 2**30:.2f}",
                f"{s['max_abs_diff_vs_card']:.1e}"]
        print("| " + " | ".join(map(str, row)) + " |")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batching", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "mid", "7b"), default="mid")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, else fp32), bf16, fp16, fp32")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--sizes", default=MIXED_SIZES, help="image sizes WxH, cycled")
    parser.add_argument("--visual-tokens", type=int, default=1280, help="the pixel budget: max visual tokens")
    parser.add_argument("--settings", type=settings_of, default=settings_of("auto,1,2,4,8"),
                        help="batch settings: auto (the code's own choice) or pairs per forward pass")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--spread", type=float, default=8.0, help="factor on lm_head[yes] - lm_head[no]")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        result = run(args, Path(workdir))
    device = resolve_device(args.device)
    print(f"{args.size} on {device} ({machine_name(device)}), torch {torch.__version__}; {args.images} images "
          f"of {args.sizes}, <= {args.visual_tokens} visual tokens; {args.rounds} rounds")
    print_table(result)
    if args.json:
        result["command"] = "python -m benchmarks.batching " + " ".join(argv or sys.argv[1:])
        result["machine"] = machine_name(device)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
