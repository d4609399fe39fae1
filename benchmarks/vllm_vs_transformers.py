"""The transformers backend against the in-process vLLM backend, in one run.

Both score the same random checkpoint (lychee.random_checkpoint, saved to disk: vLLM loads
only from disk), the same seeded synthetic 1920x1080 images and the same query, one
backend after the other (the first is freed before the second loads, so both may use the
whole GPU). It prints images/s of each and their ratio, the max |score difference| on the
0-10 scale, and peak memory: on CUDA the device memory in use at the end, as ``nvidia-smi``
would see it (vLLM reserves ``gpu_memory_utilization`` up front), on the CPU the peak
resident memory of this process plus its children's (vLLM's engine runs in a child process). Random weights
make the scores meaningless; the timings are real. Run it in the venv that has vLLM
(``make test-vllm`` builds ``.venv-vllm``)::

    VLLM_CPU_KVCACHE_SPACE=4 .venv-vllm/bin/python -m benchmarks.vllm_vs_transformers --size mid \\
        --images 32 --visual-tokens 256 --repeats 3

Results and how to read them: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import torch

from lychee import LycheeReranker
from lychee.random_checkpoint import build_random_checkpoint

from .throughput import QUERY, synthetic_images

PIXELS_PER_VISUAL_TOKEN = 28 * 28


def peak_rss(pid: int | str = "self") -> int:
    """A process's resident-set high-water mark (``VmHWM``), in bytes; 0 if it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_peak_bytes() -> int:
    """This process's peak resident memory since the last reset, plus each child's peak (vLLM's
    engine core). Read from /proc at the end: a sampling thread would steal the cores the
    timed code runs on."""
    children = psutil.Process().children(recursive=True)
    return peak_rss() + sum(peak_rss(child.pid) for child in children)


def gpu_used_bytes() -> int:
    free, total = torch.cuda.mem_get_info()
    return total - free


def time_backend(make: Callable[[], LycheeReranker], images: list, repeats: int) -> dict[str, Any]:
    """Load, warm up on one image, then time ``repeats`` runs over ``images``: the fastest counts."""
    on_gpu = torch.cuda.is_available()
    with contextlib.suppress(OSError):  # Linux: "5" resets this process's VmHWM (peak RSS)
        Path("/proc/self/clear_refs").write_text("5")
    started = time.perf_counter()
    reranker = make()
    load_s = time.perf_counter() - started
    reranker.score(QUERY, images[:1])
    seconds, records = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        records = reranker.score(QUERY, images)
        seconds.append(time.perf_counter() - started)
    peak = gpu_used_bytes() if on_gpu else cpu_peak_bytes()
    about = reranker.describe()
    del reranker
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    return {"backend": about["backend"], "dtype": about["dtype"], "load_s": load_s, "seconds": min(seconds),
            "images_per_s": len(images) / min(seconds), "peak_gib": peak / 2**30,
            "scores": [r.raw_score for r in records], "errors": [r.error for r in records if r.error]}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    dtype_name = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[args.dtype]
    checkpoint = str(build_random_checkpoint(workdir / args.size, args.size, dtype=dtype_name))
    images = synthetic_images(args.images, seed=args.seed)
    max_pixels = args.visual_tokens * PIXELS_PER_VISUAL_TOKEN
    common = {"dtype": args.dtype, "max_pixels": max_pixels}
    transformers = time_backend(lambda: LycheeReranker(checkpoint, device=args.device, batch_size=args.batch_size,
                                                       vision_cache_bytes=0, **common), images, args.repeats)
    vllm = time_backend(lambda: LycheeReranker(checkpoint, backend="vllm", **common,
                                               engine_options=json.loads(args.engine_options)),
                        images, args.repeats)
    difference = max(abs(a - b) for a, b in zip(transformers["scores"], vllm["scores"]))
    return {"size": args.size, "images": args.images, "visual_tokens": args.visual_tokens,
            "transformers": transformers, "vllm": vllm, "ratio": vllm["images_per_s"] / transformers["images_per_s"],
            "max_abs_score_difference": difference, "command": " ".join(sys.argv),
            "machine": {"platform": platform.platform(), "cpu_count": psutil.cpu_count(),
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                        "torch": torch.__version__}}


def table(result: dict[str, Any]) -> str:
    t, v = result["transformers"], result["vllm"]
    return "\n".join([
        "| images | max visual tokens | dtype | transformers img/s | vLLM img/s | ratio (vLLM / transformers) "
        "| max \\|Δscore\\| | peak transformers (GiB) | peak vLLM (GiB) | load transformers (s) | load vLLM (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['images']} | {result['visual_tokens']} | {t['dtype']} / {v['dtype']} | {t['images_per_s']:.2f} "
        f"| {v['images_per_s']:.2f} | {result['ratio']:.2f}x | {result['max_abs_score_difference']:.2e} "
        f"| {t['peak_gib']:.2f} | {v['peak_gib']:.2f} | {t['load_s']:.1f} | {v['load_s']:.1f} |"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vllm_vs_transformers",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny32", "mid", "7b"), default="mid")
    parser.add_argument("--device", default="auto", help="the transformers backend's device")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="fp32")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--visual-tokens", type=int, default=256, help="max_pixels = N x 28 x 28")
    parser.add_argument("--batch-size", type=int, default=None, help="transformers: pairs per forward pass")
    parser.add_argument("--engine-options", default='{"enforce_eager": true}',
                        help="JSON for vllm.LLM, e.g. '{\"gpu_memory_utilization\": 0.9}'")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where the random checkpoint is saved (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, args.workdir or Path(tmp))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":  # vLLM starts worker processes, which import this module again
    main()
