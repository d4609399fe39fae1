"""The vLLM backend: an in-process ``vllm.LLM`` in pooling mode, for offline batch work.

The only module that imports vllm. vLLM turns the checkpoint's language-model head into a
two-class head (``Qwen2_5_VLForSequenceClassification`` with ``classifier_from_token=["no",
"yes"]``, ``method="from_2_way_softmax"``) whose one output is softmax over (no, yes) at the
last position: p(yes), the lychee protocol's relevance. The prompt is rendered by the
checkpoint's own chat template, exactly as the transformers backend renders it, and each
image goes in as a PIL image already at its budget size (so vLLM's processor does not
resize it again), the pixels the transformers backend sees; the two agree to ~1e-5.

Create it under ``if __name__ == "__main__":`` in scripts: vLLM starts worker processes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from vllm import LLM

from .. import protocol
from .base import (
    Document,
    Progress,
    budget_sized,
    candidate_documents,
    document_messages,
    run_batched,
    visual_tokens_range,
)
from .packing import Budget
from .transformers import load_processor

log = logging.getLogger(__name__)

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
PROGRESS_CHUNK = 64  # pairs per LLM.classify call: vLLM schedules inside a call; chunks only pace progress


def vllm_dtype(dtype: str) -> str:
    """lychee's dtype name as vLLM's. ``auto`` is vLLM's own choice on a GPU and float32 on
    the CPU, where vLLM would otherwise run in 16 bits (lychee's ``auto`` there is fp32)."""
    if dtype == "auto":
        return "auto" if torch.cuda.is_available() else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


class VllmBackend:
    """:class:`~lychee.backends.base.Backend` over ``vllm.LLM(runner="pooling")``; one request at a time."""

    name = "vllm"

    def __init__(self, model: str, *, dtype: str = "auto", min_pixels: int = protocol.MIN_PIXELS,
                 max_pixels: int = protocol.MAX_PIXELS, engine_options: Mapping[str, Any] | None = None) -> None:
        self.model_id = model
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        options = {"dtype": vllm_dtype(dtype), **(engine_options or {})}
        self.llm = LLM(model=model, runner="pooling", hf_overrides=protocol.VLLM_HF_OVERRIDES,
                       limit_mm_per_prompt={"image": protocol.VLLM_MAX_IMAGES_PER_PROMPT},
                       mm_processor_kwargs={"min_pixels": min_pixels, "max_pixels": max_pixels}, **options)
        self.processor = load_processor(model)
        config = self.llm.llm_engine.model_config
        self.dtype = str(config.dtype).removeprefix("torch.")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self._lock = threading.Lock()
        log.info("vLLM engine for %s on %s (%s)", model, self.device, self.dtype)

    def close(self) -> None:
        """Stop vLLM's engine processes now (otherwise they stop when the interpreter exits)."""
        self.llm.llm_engine.engine_core.shutdown()

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "model": self.model_id, "device": self.device, "dtype": self.dtype,
                "attention": "vllm", "visual_tokens": visual_tokens_range(self)}

    def relevance(self, messages: list[dict], images: Sequence[Image.Image | None], progress: Progress | None = None,
                  query_image: Image.Image | None = None,
                  texts: Sequence[str] | None = None) -> list[float | Exception]:
        pairs = [(budget_sized(self, [image])[0] if image is not None else None, text)
                 for image, text in candidate_documents(images, texts)]
        prompts = {(image is not None, text): self.processor.apply_chat_template(
            document_messages(messages, image, text), tokenize=False, add_generation_prompt=True)
            for image, text in pairs}
        query_image = budget_sized(self, [query_image])[0] if query_image is not None else None

        def pair(document: Document) -> dict[str, Any]:  # the images in prompt order: query image, then candidate
            image, text = document
            shown = [x for x in (query_image, image) if x is not None]
            prompt = {"prompt": prompts[image is not None, text]}
            return prompt | ({"multi_modal_data": {"image": shown if len(shown) > 1 else shown[0]}} if shown else {})

        def classify(batch: list[Document]) -> list[float]:
            outputs = self.llm.classify([pair(document) for document in batch], use_tqdm=False)
            return [output.outputs.probs[0] for output in outputs]  # probs == [p(yes)]

        with self._lock:  # a failing call is retried pair by pair, so one bad pair fails alone
            return run_batched(pairs, classify, budget=Budget(rows=PROGRESS_CHUNK), progress=progress)


def load(model: str, *, dtype: str = "auto", min_pixels: int = protocol.MIN_PIXELS,
         max_pixels: int = protocol.MAX_PIXELS, engine_options: Mapping[str, Any] | None = None,
         **_: Any) -> VllmBackend:
    """The backend for ``model``; ``engine_options`` go to ``vllm.LLM`` (``tensor_parallel_size``,
    ``gpu_memory_utilization``, ``enforce_eager``, ...); options meant for other backends are ignored."""
    return VllmBackend(model, dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels,
                       engine_options=engine_options)
