"""Model-facing code: load a Qwen2.5-VL reranker checkpoint and score batches of pairs.

The only module that imports torch and transformers. The scoring story, top to bottom:
chat prompt (rendered once per query) -> processor (left-padded batch) -> forward pass
keeping only the last position's logits -> the "yes"/"no" logits -> p(yes) = sigmoid
(z_yes - z_no) -> 0-10.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from . import protocol

log = logging.getLogger(__name__)

T = TypeVar("T")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; anything else is checked to exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA GPU is available; use device='cpu'")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available; use device='cpu'")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on a GPU that supports it, fp16 on mps, fp32 otherwise."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def pick_attention(device: torch.device, dtype: torch.dtype) -> str:
    """flash_attention_2 when installed and usable, else PyTorch SDPA."""
    if (device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
            and importlib.util.find_spec("flash_attn") is not None):
        return "flash_attention_2"
    return "sdpa"


def single_token_id(tokenizer: Any, word: str) -> int:
    """The id of ``word`` in the checkpoint's own tokenizer; it must be one token."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the tokenizer splits {word!r} into {len(ids)} tokens; "
                         "this checkpoint cannot be scored in logit mode (try mode='generate')")
    return ids[0]


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU allocation failures."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass
class Engine:
    """A loaded checkpoint plus the settings that shape its inputs."""

    model: Any
    processor: Any
    model_id: str
    device: torch.device
    dtype: torch.dtype
    attention: str
    yes_id: int | None
    no_id: int | None
    min_pixels: int | None = None
    max_pixels: int | None = None

    @classmethod
    def load(cls, model_id: str, *, device: str = "auto", dtype: str = "auto",
             min_pixels: int | None = None, max_pixels: int | None = None,
             need_yes_no: bool = True) -> Engine:
        """Load processor and model with ``from_pretrained`` (hub id or local directory)."""
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        attention = pick_attention(torch_device, torch_dtype)
        processor = AutoProcessor.from_pretrained(model_id)
        processor.tokenizer.padding_side = "left"  # the last position is every row's real end
        if not getattr(processor, "chat_template", None):
            log.warning("%s ships no chat template; using the Qwen2-VL template", model_id)
            processor.chat_template = protocol.QWEN2_VL_CHAT_TEMPLATE
        model = AutoModelForImageTextToText.from_pretrained(
            model_id, dtype=torch_dtype, attn_implementation=attention, device_map={"": torch_device})
        model.eval()
        yes_id = single_token_id(processor.tokenizer, protocol.YES_TOKEN) if need_yes_no else None
        no_id = single_token_id(processor.tokenizer, protocol.NO_TOKEN) if need_yes_no else None
        log.info("loaded %s on %s (%s, %s attention)", model_id, torch_device, torch_dtype, attention)
        return cls(model, processor, model_id, torch_device, torch_dtype, attention, yes_id, no_id,
                   min_pixels, max_pixels)

    @property
    def dtype_name(self) -> str:
        return {v: k for k, v in DTYPES.items()}[self.dtype]

    def _size(self) -> dict[str, int]:
        size = dict(self.processor.image_processor.size)
        if self.min_pixels is not None:
            size["shortest_edge"] = self.min_pixels
        if self.max_pixels is not None:
            size["longest_edge"] = self.max_pixels
        return size

    def visual_tokens(self, image: Image.Image) -> int:
        """How many visual tokens ``image`` becomes (after the processor's resize)."""
        size = self._size()
        patches = self.processor.image_processor.get_number_of_image_patches(
            image.height, image.width, {"min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"]})
        return patches // self.processor.image_processor.merge_size ** 2

    def render(self, messages: list[dict]) -> str:
        """The chat prompt as text, with one image placeholder per image part."""
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _inputs(self, prompt: str, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        batch = self.processor(text=[prompt] * len(images), images=list(images), padding=True,
                               return_tensors="pt", size=self._size())
        return batch.to(self.device)

    @torch.inference_mode()
    def yes_no_logits(self, prompt: str, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[batch, 2]`` float32 logits of ("yes", "no") at each row's last position."""
        inputs = self._inputs(prompt, images)        # input_ids: [batch, seq], left-padded
        logits = self.model(**inputs, logits_to_keep=1).logits  # [batch, 1, vocab]
        return logits[:, -1, [self.yes_id, self.no_id]].float()

    @torch.inference_mode()
    def generate(self, prompt: str, images: Sequence[Image.Image]) -> list[str]:
        """Greedy answers of the model, one string per image."""
        inputs = self._inputs(prompt, images)
        out = self.model.generate(**inputs, max_new_tokens=protocol.GENERATE_MAX_NEW_TOKENS,
                                  do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)


def run_batched(items: Sequence[T], fn: Callable[[list[T]], list[Any]], *, batch_size: int,
                cost: Callable[[T], int] | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[Any]:
    """Apply ``fn`` to ``items`` in batches; return results in input order.

    Items are batched by descending ``cost`` (similar lengths pad less, and the largest
    batch comes first, so an out-of-memory error shows up at once). Out of memory halves
    the batch size and retries; any other error in a batch retries its items one by one,
    so a failing item gets its own exception (returned in its slot) and the others
    still get results.
    """
    order = sorted(range(len(items)), key=lambda i: -cost(items[i])) if cost else list(range(len(items)))
    results: list[Any] = [None] * len(items)
    start, done = 0, 0
    while start < len(order):
        chunk = order[start:start + batch_size]
        try:
            outputs = fn([items[i] for i in chunk])
        except Exception as exc:  # noqa: BLE001 - every failure becomes a per-item result
            if is_out_of_memory(exc) and batch_size > 1:
                batch_size //= 2
                log.warning("out of memory; retrying with batch size %d", batch_size)
                _free_memory()
                continue
            if len(chunk) > 1:
                outputs = [_one(fn, items[i]) for i in chunk]
            else:
                log.warning("item %d failed: %s", chunk[0], exc)
                outputs = [exc]
        for i, output in zip(chunk, outputs):
            results[i] = output
        start += len(chunk)
        done += len(chunk)
        if progress:
            progress(done, len(items))
    return results


def _one(fn: Callable[[list[T]], list[Any]], item: T) -> Any:
    try:
        return fn([item])[0]
    except Exception as exc:  # noqa: BLE001
        log.warning("item failed: %s", exc)
        return exc


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
