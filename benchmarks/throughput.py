"""Throughput of our scoring path against the model card's one-pair-at-a-time usage.

Both paths run in one process on the same random weights (lychee.random_checkpoint: the
"tiny" and "mid" checkpoints are saved and loaded back through from_pretrained; "7b", the
exact Qwen2.5-VL-7B architecture of vec-ai/lychee-rerank-mm, is built directly on the GPU)
and the same seeded synthetic 1920x1080 images. For each max-visual-token setting it prints
images/s of both paths and their ratio, the max |score difference| on the 0-10 scale,
latency for each image count, peak memory, model FLOPs per pair (benchmarks/flops.py), MFU
against a measured matmul peak, and the speed-up of a second query over the same images
(vision cache). Random weights make the scores meaningless; the timings are real.

    python -m benchmarks.throughput --size mid --device cpu --images 8,32 --visual-tokens 64,256 \\
        --reference-images 32 --repeats 3
    python -m benchmarks.throughput --size 7b --device cuda --dtype bf16 --images 20,100 \\
        --visual-tokens 768,1280,1800 --reference-images 20 --repeats 2

Results and how to read them: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from lychee import LycheeReranker, protocol
from lychee.backends.transformers import (
    DTYPES,
    Engine,
    TransformersBackend,
    pick_attention,
    resolve_device,
    resolve_dtype,
)
from lychee.backends.vision_cache import VisionCache
from lychee.random_checkpoint import build_random_checkpoint, build_random_model

from .flops import pair_flops

T = TypeVar("T")

QUERY = "a red car parked on a wet city street at night"
SECOND_QUERY = "一只黑猫坐在红色沙发上, next to a window"
PIXELS_PER_VISUAL_TOKEN = 28 * 28  # one visual token = 2x2 patches of 14x14 pixels
# "cpu" counts only this process's CPU time: on a shared machine it is not inflated by other
# jobs' turns on the cores (use it with --threads 1, where no thread spins waiting for another).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclasses.dataclass
class Measured:
    """What one timed block returned, how long it took and its peak memory."""

    result: Any
    seconds: float
    peak_bytes: int


def synthetic_images(count: int, *, width: int = 1920, height: int = 1080, seed: int = 0) -> list[Image.Image]:
    """Seeded RGB images, each a different colour gradient under noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    images = []
    for _ in range(count):
        low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        gradient = low + (high - low) * ramp                                # [1, width, 3]
        noise = rng.normal(0.0, 24.0, (height, width, 3)).astype(np.float32)  # [height, width, 3]
        images.append(Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8), "RGB"))
    return images


def write_record(path: Path, module: str, argv: Sequence[str] | None, **figures: Any) -> None:
    """The figures as JSON at ``path``, led by the command that made them (``python -m benchmarks.<module> ...``)."""
    command = f"python -m benchmarks.{module} " + " ".join(sys.argv[1:] if argv is None else argv)
    path.write_text(json.dumps({"command": command, **figures}, indent=2) + "\n")


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):  # Linux: "5" resets this process's VmHWM (peak RSS)
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the whole run's peak (Linux: KiB)


def measure(device: torch.device, fn: Callable[[], T], clock: Callable[[], float] = time.perf_counter) -> Measured:
    """Run ``fn`` once: its time on ``clock``, and peak memory (CUDA: allocated tensors; CPU: process RSS)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_peak_rss()
    start = clock()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = clock() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss()
    return Measured(result, seconds, peak)


def best_of(device: torch.device, blocks: dict[str, Callable[[], T]], rounds: int,
            clock: Callable[[], float] = time.perf_counter) -> dict[str, Measured]:
    """Run the blocks in turn, ``rounds`` times over: for each, the fastest time (the run least
    disturbed by other load; interleaving spreads a busy spell over all blocks) and the highest peak."""
    best: dict[str, Measured] = {}
    for _ in range(rounds):
        for name, fn in blocks.items():
            run = measure(device, fn, clock)
            if name in best:
                run = Measured(run.result, min(run.seconds, best[name].seconds),
                               max(run.peak_bytes, best[name].peak_bytes))
            best[name] = run
    return best


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, clock: Callable[[], float]) -> float:
    """Measured FLOP/s of square matmuls (8192 on CUDA, 2048 on CPU) in ``dtype``: the best of 5."""
    n, repeats = (8192, 20) if device.type == "cuda" else (2048, 2)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up: kernel choice, allocator
    timed = best_of(device, {"matmul": lambda: [a @ b for _ in range(repeats)]}, 5, clock)["matmul"]
    return 2 * n**3 * repeats / timed.seconds


def reference_scores(engine: Engine, query: str, images: Sequence[Image.Image], size: dict) -> list[float]:
    """The model card's style of use: one pair per forward pass, logits at every position,
    softmax over (yes, no) at the last one."""
    model, processor = engine.model, engine.processor
    scores = []
    for image in images:
        prompt = processor.apply_chat_template(protocol.rerank_messages(query), tokenize=False,
                                               add_generation_prompt=True)
        inputs = processor(text=[prompt], images=[image], size=size, return_tensors="pt").to(model.device)
        with torch.no_grad():
            logits = model(**inputs).logits  # [1, seq, vocab]
        p_yes_no = torch.softmax(logits[0, -1, [engine.yes_id, engine.no_id]].float(), dim=0)
        scores.append(10.0 * float(p_yes_no[0]))
    return scores


def build_engine(size: str, device: torch.device, dtype: torch.dtype, workdir: Path) -> Engine:
    """tiny/mid: a random checkpoint saved and loaded with from_pretrained; 7b: built in place."""
    if size == "7b":
        model, processor = build_random_model("7b", dtype, device)
        model.set_attn_implementation(pick_attention(device, dtype))
        return Engine.from_model(model, processor, "random Qwen2.5-VL-7B", vision_cache_bytes=0)
    path = build_random_checkpoint(workdir / size, size)
    dtype_name = next(name for name, value in DTYPES.items() if value == dtype)
    return Engine.load(str(path), device=str(device), dtype=dtype_name, vision_cache_bytes=0)


def run_setting(engine: Engine, images: list[Image.Image], max_visual_tokens: int, peak: float,
                args: argparse.Namespace) -> dict:
    """Every measurement at one max-visual-token setting; the vision cache starts empty."""
    max_pixels = max_visual_tokens * PIXELS_PER_VISUAL_TOKEN
    engine = dataclasses.replace(engine, max_pixels=max_pixels,
                                 vision_cache=VisionCache(args.vision_cache_mb * 2**20))
    reranker = LycheeReranker(backend=TransformersBackend(engine, args.batch_size))
    uncached = LycheeReranker(backend=TransformersBackend(dataclasses.replace(engine, vision_cache=VisionCache(0)),
                                                          args.batch_size))
    size = {**dict(engine.processor.image_processor.size), "longest_edge": max_pixels}
    device, counts, reference_count = engine.device, args.images, args.reference_images
    top, clock = max(counts), CLOCKS[args.clock]

    def ours(query: str, count: int, path: LycheeReranker = reranker) -> list[float]:
        return [r.raw_score for r in path.score(query, images[:count])]

    def ours_cold(count: int) -> list[float]:
        engine.vision_cache.clear()
        return ours(QUERY, count)

    reference_scores(engine, QUERY, images[:1], size)  # warm-up of both paths
    ours(QUERY, 2)
    visual_tokens = engine.visual_tokens(images[0])
    text_tokens = len(engine.processor.tokenizer(engine.render(protocol.rerank_messages(QUERY)))["input_ids"]) - 1
    flops = pair_flops(engine.model.config, visual_tokens, text_tokens)
    preprocess = measure(torch.device("cpu"), lambda: engine.processor.image_processor(
        images[:top], size=size, return_tensors="pt"), clock)
    out: dict[str, Any] = {
        "max_visual_tokens": max_visual_tokens, "visual_tokens": visual_tokens, "text_tokens": text_tokens,
        "batch_size": engine.budget(args.batch_size).rows, "batch_tokens": engine.budget(args.batch_size).tokens,
        "tflop_per_pair": flops / 1e12,
        "cpu_preprocess_ms_per_image": 1e3 * preprocess.seconds / top}

    blocks: dict[str, Callable[[], list[float]]] = {
        **{f"ours_{n}": lambda n=n: ours_cold(n) for n in counts},  # ascending: the largest fills the cache
        "second_query": lambda: ours(SECOND_QUERY, top),
        "cache_off": lambda: ours(QUERY, top, uncached)}
    if reference_count:
        blocks["reference"] = lambda: reference_scores(engine, QUERY, images[:reference_count], size)
    timed = best_of(device, blocks, args.repeats, clock)
    for name, run in timed.items():
        out[name] = {"seconds": run.seconds, "peak_bytes": run.peak_bytes}
    out["ours_images_per_s"] = top / timed[f"ours_{top}"].seconds
    out["mfu_ours"] = out["ours_images_per_s"] * flops / peak
    out["cache_off"]["images_per_s"] = top / timed["cache_off"].seconds
    out["second_query"].update(speedup=timed[f"ours_{top}"].seconds / timed["second_query"].seconds,
                               cache=repr(engine.vision_cache))
    if reference_count:
        rate = reference_count / timed["reference"].seconds
        out["reference"].update(images=reference_count, images_per_s=rate)
        out["ratio"] = out["ours_images_per_s"] / rate
        out["mfu_reference"] = rate * flops / peak
        out["max_abs_score_diff"] = max(abs(a - b) for a, b in zip(timed[f"ours_{top}"].result,
                                                                    timed["reference"].result))
    return out


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def print_table(results: list[dict], counts: list[int]) -> None:
    """One markdown row per visual-token setting."""
    top = max(counts)
    header = (["max visual tokens", "tokens/image", "batch", "ref img/s", "ours img/s", "ratio",
               "ours img/s, cache off", "max \\|Δscore\\|"]
              + [f"latency {n} img (s)" for n in counts]
              + [f"2nd query {top} img (s)", "2nd-query speed-up", "peak ref (GiB)", "peak ours (GiB)",
                 "TFLOP/pair", "MFU ref", "MFU ours", "CPU preprocess ms/img"])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        ref = r.get("reference")
        row = [r["max_visual_tokens"], r["visual_tokens"], r["batch_size"],
               f"{ref['images_per_s']:.2f}" if ref else "-", f"{r['ours_images_per_s']:.2f}",
               f"{r['ratio']:.2f}x" if ref else "-", f"{r['cache_off']['images_per_s']:.2f}",
               f"{r['max_abs_score_diff']:.2e}" if ref else "-"]
        row += [f"{r[f'ours_{n}']['seconds']:.2f}" for n in counts]
        row += [f"{r['second_query']['seconds']:.2f}", f"{r['second_query']['speedup']:.1f}x",
                _gib(ref["peak_bytes"]) if ref else "-", _gib(r[f"ours_{top}"]["peak_bytes"]),
                f"{r['tflop_per_pair']:.4g}", f"{r['mfu_reference']:.1%}" if ref else "-",
                f"{r['mfu_ours']:.1%}", f"{r['cpu_preprocess_ms_per_image']:.0f}"]
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name with its core and torch thread counts."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def _ints(text: str) -> list[int]:
    return sorted({int(part) for part in text.split(",") if part.strip()})


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "mid", "7b"), default="mid")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, else fp32), bf16, fp16, fp32")
    parser.add_argument("--images", type=_ints, default=[20, 100], help="image counts to time, e.g. 20,100")
    parser.add_argument("--visual-tokens", type=_ints, default=[768, 1280, 1800],
                        help="max visual tokens per image (max_pixels = N x 28 x 28)")
    parser.add_argument("--reference-images", type=int, default=None,
                        help="images for the one-pair reference (default: the smallest count; 0 skips it)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="pairs per forward pass at most (default: packed by tokens, at most 32)")
    parser.add_argument("--vision-cache-mb", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1, help="time every block N times, keep the fastest")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (shared machines)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reference_images is None:
        args.reference_images = min(args.images)
    images = synthetic_images(max(args.images), seed=args.seed)
    with tempfile.TemporaryDirectory() as workdir:
        engine = build_engine(args.size, device, dtype, Path(workdir))
        peak = matmul_peak_flops(device, dtype, CLOCKS[args.clock])
        params = sum(p.numel() for p in engine.model.parameters())
        machine = machine_name(device)
        print(f"{args.size}: {params / 1e6:.1f}M params, {engine.dtype_name} on {device} ({machine}), "
              f"{engine.attention} attention, torch {torch.__version__}; {args.clock}-clock times, best of "
              f"{args.repeats}; measured {engine.dtype_name} matmul peak {peak / 1e12:.3f} TFLOP/s")
        results = [run_setting(engine, images, tokens, peak, args) for tokens in args.visual_tokens]
    print_table(results, args.images)
    if args.json:
        summary = {"command": "python -m benchmarks.throughput " + " ".join(argv or sys.argv[1:]),
                   "size": args.size, "device": str(device), "machine": machine, "dtype": engine.dtype_name,
                   "attention": engine.attention, "clock": args.clock, "params": params,
                   "matmul_peak_flops": peak, "results": results}
        args.json.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return results


if __name__ == "__main__":
    main()
