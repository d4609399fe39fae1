"""The transformers backend: a Qwen2.5-VL reranker checkpoint in this process, scored in batches.

Besides :mod:`lychee.random_checkpoint` and the vLLM backend (which reuses :func:`load_processor`
to render its prompt), the only module that imports torch and transformers. The scoring story,
top to bottom:
chat prompt (rendered once per query) -> each image's vision-tower output (from the
vision cache, or processor + vision tower for the images not seen before) -> token
embeddings of the left-padded prompts with the image features scattered in at the
image-token positions -> the language model's last hidden state at the last position ->
z_yes - z_no as one fp32 dot product with ``lm_head[yes] - lm_head[no]`` -> p(yes) =
sigmoid(z_yes - z_no) -> 0-10.

Why the dot product and not the logits: the vocabulary projection over 152k tokens is
wasted work for two of them, and in bf16 the two large logits are each rounded before
their difference is taken, which quantises the score and makes it depend on the batch.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, DynamicCache
from transformers.utils import is_flash_attn_2_available

from .. import protocol
from ..images import PixelBudget, visual_tokens
from ..zero_gpu import on_zero_gpu
from .base import (
    Document,
    Progress,
    budget_sized,
    candidate_documents,
    document_messages,
    run_batched,
    visual_tokens_range,
)
from .packing import MAX_ROWS, UNLIMITED, Budget, cpu_cache_bytes, tokens_for_cache, tokens_for_memory
from .vision_cache import VisionCache, VisionFeatures, cache_bytes, image_digest

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
    """``auto`` -> bf16 on a GPU of compute capability 8.0 (Ampere) or newer, fp32 everywhere else
    (older GPUs, mps, the CPU).

    lychee-rerank-mm is trained in bf16, whose range fp16 lacks: its activations can overflow to
    inf and give NaN scores. So fp16 is never chosen silently; asked for, it comes with a warning,
    and a score that is not finite becomes that document's error. ``torch.cuda.is_bf16_supported()``
    is no guide: it is true on a T4 or V100 too, where bf16 is emulated and slow.
    """
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    if dtype == "fp16":
        log.warning("fp16 asked for: the model is trained in bf16, and fp16's narrower range can overflow to "
                    "inf/NaN; such a document gets an error instead of a score. Prefer bf16 (Ampere or newer) "
                    "or fp32.")
    return DTYPES[dtype]


def pick_attention(device: torch.device, dtype: torch.dtype) -> str:
    """flash_attention_2 on a CUDA GPU in bf16/fp16 when transformers finds a usable ``flash_attn``
    (installed, >= 2.3.3), else PyTorch SDPA."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and is_flash_attn_2_available():
        return "flash_attention_2"
    return "sdpa"


def free_cuda_bytes(device: torch.device) -> int:
    """Memory a batch can use on ``device``: what the driver reports free, plus what PyTorch's
    allocator holds reserved but unallocated (the last request's cached blocks, which
    ``mem_get_info`` counts as used although this process can reuse them at once)."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def single_token_id(tokenizer: Any, word: str) -> int:
    """The id of ``word`` in the checkpoint's own tokenizer; it must be one token."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the tokenizer splits {word!r} into {len(ids)} tokens; "
                         "this checkpoint cannot be scored in logit mode (try mode='generate')")
    return ids[0]


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU allocation failures; frees the CUDA cache for the retry."""
    if not (isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()):
        return False
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return True


def load_processor(model_id: str) -> Any:
    """The checkpoint's processor, padding on the left, with the Qwen2-VL chat template if it ships none."""
    return prepare_processor(AutoProcessor.from_pretrained(model_id), model_id)


def prepare_processor(processor: Any, model_id: str) -> Any:
    """``processor`` padding on the left, with the Qwen2-VL chat template if it has none."""
    processor.tokenizer.padding_side = "left"  # the last position is every row's real end
    if not getattr(processor, "chat_template", None):
        log.warning("%s ships no chat template; using the Qwen2-VL template", model_id)
        processor.chat_template = protocol.QWEN2_VL_CHAT_TEMPLATE
    return processor


def token_activation_bytes(config: Any, *, dtype_bytes: int = 2) -> int:
    """A rough peak of one token's activations in an inference forward pass.

    A language-model token holds the residual stream, its normalised copy and the attention's
    q/k/v/output (~4 x hidden) plus the MLP's gate, up and their product (3 x intermediate); a
    visual token is 4 patches of the vision tower, each the same with the tower's widths. The
    tower and the language model run one after the other, so the larger of the two counts.
    Layers keep no cache, so depth does not multiply; SDPA/flash kernels keep attention
    scores out of memory.
    """
    text, vision = config.text_config, config.vision_config
    language = 4 * text.hidden_size + 3 * text.intermediate_size
    visual = vision.spatial_merge_size ** 2 * (4 * vision.hidden_size + 3 * vision.intermediate_size)
    return dtype_bytes * max(language, visual)


def shared_length(rows: Sequence[Sequence[int]], vision_start_id: int) -> int:
    """How many leading token ids every row shares, cut before any row's second image (its candidate's
    features differ from row to row although its placeholder ids do not) and short of every row's last
    token (whose hidden state gives the score)."""
    first = rows[0]
    length = min(len(row) for row in rows) - 1
    for row in rows:
        length = min(length, next((i for i, (a, b) in enumerate(zip(first, row)) if a != b), length))
        starts = [i for i, token in enumerate(row) if token == vision_start_id]
        if len(starts) > 1:
            length = min(length, starts[1])
    return max(length, 0)


@dataclass(frozen=True)
class SharedPrefix:
    """The beginning every row of a request shares, run once: its token ids, keys and values, and the
    position its rows' rests start at."""

    ids: tuple[int, ...]
    cache: Any            # a DynamicCache of batch 1: per layer [1, kv heads, len(ids), head dim]
    next_position: int

    def __len__(self) -> int:
        return len(self.ids)


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
    yes_minus_no: torch.Tensor | None = None  # [hidden] fp32: lm_head[yes] - lm_head[no]
    min_pixels: int = protocol.MIN_PIXELS
    max_pixels: int = protocol.MAX_PIXELS
    vision_cache: VisionCache = field(default_factory=lambda: VisionCache(0))
    weight_bytes: int = 0  # parameters and buffers: what ZeroGPU moves onto a fresh worker's GPU
    attention_proven: bool = False  # the attention kernel has run a batch

    @classmethod
    def load(cls, model_id: str, *, device: str = "auto", dtype: str = "auto",
             min_pixels: int = protocol.MIN_PIXELS, max_pixels: int = protocol.MAX_PIXELS,
             need_yes_no: bool = True, vision_cache_bytes: int | None = None) -> Engine:
        """Load processor and model with ``from_pretrained`` (hub id or local directory).

        ``min_pixels``/``max_pixels``: the pixel budget of each image (default: the model
        card's, at most 1280 visual tokens). ``vision_cache_bytes``: bound of the vision
        cache (None: ``$LYCHEE_VISION_CACHE_MB`` or 1 GiB; 0: off).
        """
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        processor = AutoProcessor.from_pretrained(model_id)
        # On ZeroGPU, CUDA is emulated in the calling thread only, and transformers copies weights to
        # their device in a thread pool: loaded straight onto cuda, a worker thread would reach real
        # CUDA. So there the weights load on the CPU and move to cuda here, in this thread, as ZeroGPU
        # documents (``model.to("cuda")`` at start-up). That does not rest on a private switch of
        # transformers' loader (HF_DEACTIVATE_ASYNC_LOAD), and costs nothing: ZeroGPU keeps a CPU copy
        # anyway, to pack it. Elsewhere the weights load straight onto the device, without a CPU copy.
        move_after_load = torch_device.type == "cuda" and on_zero_gpu()
        model = AutoModelForImageTextToText.from_pretrained(
            model_id, dtype=torch_dtype, attn_implementation=pick_attention(torch_device, torch_dtype),
            device_map={"": "cpu" if move_after_load else torch_device})
        if move_after_load:
            model.to(torch_device)
        return cls.from_model(model, processor, model_id, min_pixels=min_pixels, max_pixels=max_pixels,
                              need_yes_no=need_yes_no, vision_cache_bytes=vision_cache_bytes)

    @classmethod
    def from_model(cls, model: Any, processor: Any, model_id: str, *, min_pixels: int = protocol.MIN_PIXELS,
                   max_pixels: int = protocol.MAX_PIXELS, need_yes_no: bool = True,
                   vision_cache_bytes: int | None = None) -> Engine:
        """Wrap a model and processor already in memory (``load`` ends here; the benchmarks
        build a random 7B directly on the GPU)."""
        processor = prepare_processor(processor, model_id)
        # Inference only: with no parameter asking for gradients, no forward pass anywhere (the
        # query image's, an explanation's) can build an autograd graph and keep its activations.
        model.eval().requires_grad_(False)
        yes_id = single_token_id(processor.tokenizer, protocol.YES_TOKEN) if need_yes_no else None
        no_id = single_token_id(processor.tokenizer, protocol.NO_TOKEN) if need_yes_no else None
        yes_minus_no = None
        if need_yes_no:
            head = model.get_output_embeddings()
            if head.bias is not None:
                raise ValueError(f"{model_id}: an lm_head with a bias is not supported in logit mode")
            yes_minus_no = (head.weight[yes_id].float() - head.weight[no_id].float()).detach()
        attention = model.config._attn_implementation
        vision_cache = VisionCache(cache_bytes(vision_cache_bytes))
        weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        log.info("loaded %s on %s (%s, %s attention, %.2f GB of weights, vision cache %.0f MiB)", model_id,
                 model.device, model.dtype, attention, weight_bytes / 1e9, vision_cache.max_bytes / 2**20)
        return cls(model, processor, model_id, model.device, model.dtype, attention, yes_id, no_id,
                   yes_minus_no, min_pixels, max_pixels, vision_cache, weight_bytes)

    @property
    def dtype_name(self) -> str:
        return {v: k for k, v in DTYPES.items()}[self.dtype]

    def _size(self) -> dict[str, int]:
        """The processor's ``size`` argument: the pixel budget, in transformers 5 terms."""
        return {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}

    @property
    def pixel_budget(self) -> PixelBudget:
        return self.min_pixels, self.max_pixels

    def visual_tokens(self, image: Image.Image) -> int:
        """How many visual tokens ``image`` becomes: the processor's own ``smart_resize`` arithmetic."""
        return visual_tokens(image, self.pixel_budget)

    def text_tokens(self, prompt: str) -> int:
        """Tokens of ``prompt`` besides its images' visual tokens."""
        ids = self.processor.tokenizer(prompt)["input_ids"]
        return len(ids) - ids.count(self.processor.image_token_id)

    def budget(self, rows: int | None = None) -> Budget:
        """What one forward pass may hold. On CUDA: padded tokens whose activations fit in half the
        free memory. Elsewhere: with ``rows`` given, no token bound (memory is the only limit); else
        as many tokens as keep a batch's residual stream (tokens x hidden) in a core's L2 cache,
        beyond which a CPU runs a longer batch no faster per token, so padding would only cost.
        ``rows``: pairs per pass at most (default 32)."""
        if self.device.type == "cuda":
            token_bytes = token_activation_bytes(self.model.config, dtype_bytes=self.dtype.itemsize)
            tokens = tokens_for_memory(free_cuda_bytes(self.device), token_bytes)
        elif rows is not None:
            tokens = UNLIMITED
        else:
            residual_bytes = self.model.config.text_config.hidden_size * self.dtype.itemsize
            tokens = tokens_for_cache(cpu_cache_bytes(), residual_bytes)
        budget = Budget(rows=rows or MAX_ROWS, tokens=tokens)
        log.debug("batch budget on %s: %s", self.device, budget)
        return budget

    def with_attention_fallback(self, run: Callable[[], T]) -> T:
        """``run()``. Until flash attention has run one batch, its failure (a GPU or a build its kernels
        do not support) switches the model to SDPA, with a warning, and runs again; if SDPA fails too,
        the fault was not the kernel's: flash attention is restored and the first error raised."""
        if self.attention != "flash_attention_2" or self.attention_proven:
            return run()
        try:
            result = run()
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            self.model.set_attn_implementation("sdpa")
            try:
                result = run()
            except Exception:
                self.model.set_attn_implementation("flash_attention_2")
                raise exc from None
            log.warning("flash_attention_2 failed on the first batch (%s); using sdpa", exc)
            self.attention = "sdpa"
        self.attention_proven = True
        return result

    def render(self, messages: list[dict]) -> str:
        """The chat prompt as text, with one image placeholder per image part."""
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _inputs(self, prompt: str, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        batch = self.processor(text=[prompt] * len(images), images=list(images), padding=True,
                               return_tensors="pt", size=self._size())
        return batch.to(self.device)

    def _cache_keys(self, images: Sequence[Image.Image]) -> list[Hashable]:
        """Per image: (pixel hash, pixel settings, model, dtype)."""
        size = self._size()
        settings = (size["shortest_edge"], size["longest_edge"], self.model_id, self.dtype_name)
        # ~5 ms per 1080p image on one core; hashlib releases the GIL, so threads share the work.
        with ThreadPoolExecutor(max_workers=max(1, min(len(images), os.cpu_count() or 1))) as pool:
            return [(digest, *settings) for digest in pool.map(image_digest, images)]

    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image]) -> list[VisionFeatures]:
        """Each image's vision-tower output; images in the vision cache skip processor and tower."""
        if not images:
            return []
        keys = self._cache_keys(images) if self.vision_cache.enabled else None
        features = [self.vision_cache.get(key) for key in keys] if keys else [None] * len(images)
        missing = [i for i, found in enumerate(features) if found is None]
        if missing:
            for i, computed in zip(missing, self._encode([images[i] for i in missing])):
                features[i] = computed
                if keys:  # a compact, detached CPU copy: a view would keep the whole batch's output alive
                    self.vision_cache.put(keys[i], VisionFeatures(computed.grid_thw,
                                                                  computed.embeds.detach().to("cpu", copy=True)))
        return features

    def _encode(self, images: list[Image.Image]) -> list[VisionFeatures]:
        """Processor + vision tower over ``images`` in one batch."""
        # The resize/normalise takes tens of ms per 1080p image on a CPU core; on CUDA the GPU does it.
        pixels = self.processor.image_processor(images, size=self._size(), return_tensors="pt",
                                                device=self.device if self.device.type == "cuda" else None)
        grids = pixels["image_grid_thw"].to(self.device)        # [n, 3]: (t, h, w) patches of each image
        patches = pixels["pixel_values"].to(self.device)        # [sum of t*h*w, 3*2*14*14]: all images' patches
        embeds = self.model.get_image_features(patches, grids).pooler_output  # n x [t*h*w/4, hidden]
        return [VisionFeatures(tuple(grid), embed) for grid, embed in zip(grids.tolist(), embeds)]

    def _widened(self, prompts: Sequence[str], visual_tokens: Sequence[Sequence[int]]) -> list[str]:
        """In row i, ``prompts[i]`` with its k-th image placeholder widened to ``visual_tokens[i][k]`` tokens."""
        placeholder = self.processor.image_token
        texts = []
        for prompt, row in zip(prompts, visual_tokens):
            pieces = prompt.split(placeholder)  # one more than the image parts
            texts.append("".join(piece + placeholder * n for piece, n in zip(pieces, row)) + pieces[-1])
        return texts

    def _text_inputs(self, prompts: Sequence[str], visual_tokens: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """The tokenised prompts, left-padded (:meth:`_widened`)."""
        tokens = self.processor.tokenizer(self._widened(prompts, visual_tokens), padding=True, return_tensors="pt")
        input_ids = tokens["input_ids"].to(self.device)         # [batch, seq], left-padded
        return {"input_ids": input_ids, "attention_mask": tokens["attention_mask"].to(self.device),
                "mm_token_type_ids": (input_ids == self.processor.image_token_id).long()}  # 1 = image token

    def _features(self, images: Sequence[Image.Image | None]) -> list[VisionFeatures | None]:
        """Each row's candidate image features (None for a text alone)."""
        with_image = [i for i, image in enumerate(images) if image is not None]
        features: list[VisionFeatures | None] = [None] * len(images)
        for i, computed in zip(with_image, self.image_features([images[i] for i in with_image])):
            features[i] = computed                              # [visual tokens_i, hidden]
        return features

    def _last_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[batch]`` float32 z_yes - z_no from each row's last hidden state ``[batch, hidden]``."""
        return hidden.float() @ self.yes_minus_no.to(hidden.device)

    @torch.inference_mode()
    def relevance_logits(self, prompt: str | Sequence[str], images: Sequence[Image.Image | None],
                         query: VisionFeatures | None = None, prefix: SharedPrefix | None = None) -> torch.Tensor:
        """``[batch]`` float32 z_yes - z_no at each row's last position; p(yes) is its sigmoid.

        ``prompt``: one for every row, or one per row (documents that carry text). A row whose
        image is None is a text alone: its prompt has no candidate image part and it never
        reaches the vision tower. ``query``: the query image's features, computed once by the
        caller and shared by every row; each prompt then has the query image's part first.
        ``prefix``: the rows' shared beginning already run (:meth:`shared_prefix`), so only each
        row's rest goes through the language model.
        """
        prompts = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
        features = self._features(images)
        if prefix is not None:
            return self._logits_after(prefix, prompts, query, features)
        rows = [[x for x in (query, f) if x is not None] for f in features]  # each row's images, in prompt order
        inputs = self._text_inputs(prompts, [[len(x.embeds) for x in row] for row in rows])
        embeds = self.model.get_input_embeddings()(inputs["input_ids"])  # [batch, seq, hidden]
        image_positions = inputs["input_ids"] == self.processor.image_token_id  # [batch, seq]
        grids = None                                            # a batch of texts alone has no image
        if any(rows):
            # Row-major order of the positions is image order, so the concatenated features land in place.
            embeds[image_positions] = torch.cat([x.embeds.to(self.device) for row in rows for x in row]
                                                ).to(embeds.dtype)
            grids = torch.tensor([x.grid_thw for row in rows for x in row], device=self.device)  # [images, 3]
        # input_ids ride along only for the model to derive its 3D (M-RoPE) positions from them and
        # the grids, exactly as in a plain call; the embeddings come from inputs_embeds.
        hidden = self.model.model(**inputs, inputs_embeds=embeds, image_grid_thw=grids,
                                  use_cache=False).last_hidden_state[:, -1]  # [batch, hidden], final norm applied
        return self._last_hidden(hidden)

    # -- an image query's shared prefix --------------------------------------------------------------
    # Every row of an image query starts with the same ~1,300 tokens: system, instruction, the query
    # image and the query text. They are run through the language model once per request; each batch
    # then runs only its rows' documents, attending to the prefix's keys and values (vLLM's prefix
    # caching, by hand). Exact by construction: the prefix is the token ids the full rows share, cut
    # before any candidate image, and positions continue where the prefix's end.

    def _embedded(self, ids: torch.Tensor, images: Sequence[VisionFeatures]) -> torch.Tensor:
        """Token embeddings of ``ids`` ``[batch, seq]`` with ``images``' features at the image tokens, in order."""
        embeds = self.model.get_input_embeddings()(ids)          # [batch, seq, hidden]
        if images:
            embeds[ids == self.processor.image_token_id] = torch.cat(
                [x.embeds.to(self.device) for x in images]).to(embeds.dtype)
        return embeds

    def _positions(self, ids: torch.Tensor, images: Sequence[VisionFeatures],
                   mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[3, batch, seq]`` M-RoPE positions of ``ids`` from 0, the model's own arithmetic."""
        grids = torch.tensor([x.grid_thw for x in images], device=self.device) if images else None
        return self.model.model.get_rope_index(ids, (ids == self.processor.image_token_id).long(),
                                               image_grid_thw=grids, attention_mask=mask)[0]

    def _forward(self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> Any:
        # transformers 5.24 names the argument ``cache``; 5.19 (vLLM's) ``past_key_values``.
        return self.model.model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask, use_cache=True,
                                **{self._cache_argument: cache})

    @functools.cached_property
    def _cache_argument(self) -> str:  # read once: the forward passes of every batch use it
        return "cache" if "cache" in inspect.signature(self.model.model.forward).parameters else "past_key_values"

    @torch.inference_mode()
    def shared_prefix(self, prompts: Sequence[str], query: VisionFeatures) -> SharedPrefix | None:
        """The tokens that every row of ``prompts`` (one per kind of document) begins with, up to its
        candidate image, run once with the query image's features; None if that is a token or less."""
        placeholder = self.processor.image_token
        widths = [[len(query.embeds)] + [1] * (p.count(placeholder) - 1) for p in prompts]  # the candidate's width
        rows = self.processor.tokenizer(self._widened(prompts, widths))["input_ids"]       # does not change the prefix
        length = shared_length(rows, self.model.config.vision_start_token_id)
        if length < 2:
            return None
        ids = torch.tensor([rows[0][:length]], device=self.device)                         # [1, prefix]
        cache, positions = DynamicCache(), self._positions(ids, [query])
        self._forward(self._embedded(ids, [query]), positions, torch.ones_like(ids), cache)
        return SharedPrefix(tuple(rows[0][:length]), cache, int(positions.max()) + 1)

    def _logits_after(self, prefix: SharedPrefix, prompts: Sequence[str], query: VisionFeatures,
                      features: Sequence[VisionFeatures | None]) -> torch.Tensor:
        """:meth:`relevance_logits` of rows that begin with ``prefix``: only their rests are run, right-padded."""
        rows = self.processor.tokenizer(self._widened(
            prompts, [[len(query.embeds)] + ([len(f.embeds)] if f is not None else []) for f in features]))["input_ids"]
        if any(tuple(row[:len(prefix)]) != prefix.ids for row in rows):
            raise ValueError("a row does not begin with the shared prefix")
        rests = [row[len(prefix):] for row in rows]
        lengths = torch.tensor([len(rest) for rest in rests], device=self.device)
        longest, pad = int(lengths.max()), self.processor.tokenizer.pad_token_id
        ids = torch.tensor([rest + [pad] * (longest - len(rest)) for rest in rests],
                           device=self.device)                  # [batch, longest rest], right-padded
        mask = (torch.arange(longest, device=self.device) < lengths[:, None]).long()
        images = [f for f in features if f is not None]
        # The rests' positions continue from the prefix's: M-RoPE shifts every axis alike by what came before.
        positions = self._positions(ids, images, mask) + prefix.next_position
        batch = len(rows)
        cache = DynamicCache(ddp_cache_data=[(layer.keys.expand(batch, -1, -1, -1),
                                              layer.values.expand(batch, -1, -1, -1)) for layer in prefix.cache.layers])
        attention = torch.cat([torch.ones(batch, len(prefix), dtype=mask.dtype, device=self.device), mask], dim=1)
        hidden = self._forward(self._embedded(ids, images), positions, attention, cache).last_hidden_state
        return self._last_hidden(hidden[torch.arange(batch, device=self.device), lengths - 1])  # each row's last

    @torch.inference_mode()
    def generate(self, prompt: str, images: Sequence[Image.Image]) -> list[str]:
        """Greedy answers of the model, one string per image."""
        inputs = self._inputs(prompt, images)
        out = self.model.generate(**inputs, max_new_tokens=protocol.GENERATE_MAX_NEW_TOKENS,
                                  do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)



class TransformersBackend:
    """:class:`~lychee.backends.base.Backend` over an :class:`Engine`: pairs packed into batches
    by tokens (:mod:`~lychee.backends.packing`; ``batch_size``: pairs per batch at most), the
    budget halved on out of memory.

    One request at a time: the engine and its vision cache are not thread-safe.
    """

    name = "transformers"

    def __init__(self, engine: Engine, batch_size: int | None = None, *, share_prefix: bool = True) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.engine = engine
        self.batch_size = batch_size
        self.share_prefix = share_prefix  # an image query's shared prefix run once per request
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    @property
    def min_pixels(self) -> int:
        return self.engine.min_pixels

    @property
    def max_pixels(self) -> int:
        return self.engine.max_pixels

    @property
    def weight_bytes(self) -> int:
        return self.engine.weight_bytes

    def describe(self) -> dict[str, str]:
        e = self.engine
        return {"backend": self.name, "model": e.model_id, "device": str(e.device), "dtype": e.dtype_name,
                "attention": e.attention, "visual_tokens": visual_tokens_range(self)}

    def _batched(self, items: Sequence[T], fn: Any, progress: Progress | None, *,
                 cost: Callable[[T], int]) -> list[Any]:
        """``fn`` over ``items`` in batches packed by tokens: ``cost`` gives an item's row length."""
        return run_batched(items, lambda batch: self.engine.with_attention_fallback(lambda: fn(batch)),
                           budget=self.engine.budget(self.batch_size), cost=cost, progress=progress,
                           out_of_memory=is_out_of_memory)

    def relevance(self, messages: list[dict], images: Sequence[Image.Image | None], progress: Progress | None = None,
                  query_image: Image.Image | None = None,
                  texts: Sequence[str] | None = None) -> list[float | Exception]:
        pairs = [(budget_sized(self, [image])[0] if image is not None else None, text)
                 for image, text in candidate_documents(images, texts)]
        prompts = {(image is not None, text): self.engine.render(document_messages(messages, image, text))
                   for image, text in pairs}                   # one per kind of document and text
        prompt_tokens = {key: self.engine.text_tokens(prompt) for key, prompt in prompts.items()}

        def score(batch: list[Document]) -> list[float]:
            batch_prompts = [prompts[image is not None, text] for image, text in batch]
            return self.engine.relevance_logits(batch_prompts, [image for image, _ in batch], query,
                                                prefix).sigmoid().tolist()

        with self._lock:  # the query image goes through the vision tower (and the prefix the model) once
            query = (self.engine.with_attention_fallback(
                lambda: self.engine.image_features(budget_sized(self, [query_image]))[0])
                if query_image is not None else None)
            query_tokens = len(query.embeds) if query is not None else 0
            prefix = (self.engine.with_attention_fallback(lambda: self.engine.shared_prefix(list(prompts.values()),
                                                                                             query))
                      if query is not None and self.share_prefix else None)

            def cost(pair: Document) -> int:  # a row: its prompt's text, the query image's and its image's tokens
                image, text = pair
                visual = self.engine.visual_tokens(image) if image is not None else 0
                return prompt_tokens[image is not None, text] + query_tokens + visual

            return self._batched(pairs, score, progress, cost=cost)

    def generate(self, messages: list[dict], images: Sequence[Image.Image],
                 progress: Progress | None = None) -> list[str | Exception]:
        """The model's greedy answer for each image (generate mode), or the exception it raised."""
        prompt = self.engine.render(messages)
        with self._lock:
            fixed = self.engine.text_tokens(prompt)
            return self._batched(budget_sized(self, images), lambda batch: self.engine.generate(prompt, batch),
                                 progress, cost=lambda image: fixed + self.engine.visual_tokens(image))


def load(model: str, *, device: str = "auto", dtype: str = "auto", min_pixels: int = protocol.MIN_PIXELS,
         max_pixels: int = protocol.MAX_PIXELS, need_yes_no: bool = True, batch_size: int | None = None,
         vision_cache_bytes: int | None = None, **_: Any) -> TransformersBackend:
    """The backend over ``Engine.load(model, ...)``; options meant for other backends are ignored."""
    engine = Engine.load(model, device=device, dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels,
                         need_yes_no=need_yes_no, vision_cache_bytes=vision_cache_bytes)
    return TransformersBackend(engine, batch_size)
