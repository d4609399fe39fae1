"""Randomly initialised Qwen2.5-VL checkpoints for offline tests and benchmarks.

lychee-rerank-mm is a Qwen2.5-VL-7B fine-tune whose weights cannot be downloaded here, so this
module builds a structurally faithful stand-in: a Qwen2.5-VL config ("tiny", "tiny32", "mid" or
the exact "7b" architecture), random weights, a tiny byte-level BPE tokenizer with the Qwen2-VL special
tokens (where "yes" and "no" are single tokens), the Qwen2-VL image processor and the real chat
template. The scores it produces are meaningless; shapes, token ids and code paths are real.
"""

from __future__ import annotations

import logging
import os
import pathlib

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from .protocol import QWEN2_VL_CHAT_TEMPLATE

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

_CORPUS = """\
Judge whether the Document meets the requirements based on the Query and the Instruct provided.
Note that the answer can only be "yes" or "no".
<Instruct>: Given a search query, retrieve relevant candidates that answer the query.
<Query>: a black cat sleeping on a sofa
<Document>: an image with a caption. Score: 0.87
yes
no
yes no yes no Yes No YES NO
Find an image that matches the given caption. Retrieve the document that answers the question.
A dog runs in the park. A photo of a red car on the street. The quick brown fox jumps over it.
一只黑猫在沙发上睡觉。一只白狗在公园里奔跑。
根据查询和指令判断文档是否符合要求。得分 相关 图片 描述 文档 查询 问题 答案 是 否
"""


def build_tokenizer(vocab_size: int = 640) -> PreTrainedTokenizerFast:
    """Train a tiny byte-level BPE (milliseconds); the special tokens get the last ids, as in Qwen."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
        bos_token=None, unk_token=None, model_max_length=32768,
    )  # fmt: skip
    for word in ("yes", "no"):
        ids = fast.encode(word, add_special_tokens=False)
        assert len(ids) == 1, f"{word!r} must be a single token, got {ids}"
    return fast


def build_processor(
    min_pixels: int = 28 * 28 * 4, max_pixels: int = 28 * 28 * 64
) -> Qwen2_5_VLProcessor:
    """Tokenizer + Qwen2-VL image/video processors + chat template; pixel bounds apply to images."""
    # transformers 5.x: min/max pixels live in size={"shortest_edge", "longest_edge"} (in pixels).
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels}
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )  # fmt: skip


def _arch(
    hidden: int, inter: int, layers: int, heads: int, kv_heads: int, mrope: list[int],
    v_depth: int, v_hidden: int, v_inter: int, v_heads: int, fullatt: list[int],
) -> dict[str, dict]:  # fmt: skip
    """Text and vision sub-config parameters (the vision tower projects to the text hidden size)."""
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope}
    text = {
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "max_window_layers": layers, "rms_norm_eps": 1e-6, "rope_parameters": rope,
    }  # fmt: skip
    vision = {
        "depth": v_depth, "hidden_size": v_hidden, "intermediate_size": v_inter,
        "num_heads": v_heads, "out_hidden_size": hidden, "fullatt_block_indexes": fullatt,
        "window_size": 112, "patch_size": 14, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "tokens_per_second": 2,
    }  # fmt: skip
    return {"text": text, "vision": vision}


SIZES: dict[str, dict] = {
    "tiny": _arch(64, 128, 2, 4, 2, [2, 3, 3], 2, 32, 64, 2, [1]),
    # tiny with 32-wide attention heads (2 x 32, 1 kv head): vLLM's CPU attention takes head
    # sizes 32, 64, 80, ... only, so this is the smallest checkpoint vLLM's tests can serve.
    "tiny32": _arch(64, 128, 2, 2, 1, [4, 6, 6], 2, 32, 64, 2, [1]),
    "mid": _arch(512, 1408, 6, 8, 2, [8, 12, 12], 4, 256, 704, 4, [1, 3]),
    "7b": _arch(3584, 18944, 28, 28, 4, [16, 24, 24], 32, 1280, 3420, 16, [7, 15, 23, 31]),
}
# As vec-ai/lychee-rerank-mm; the padded rows (ids >= len(tokenizer)) are never produced.
SIZES["7b"]["text"]["vocab_size"] = 152064
# A wider init than Qwen's 0.02 spreads the tiny model's p(yes) over the scale instead of
# clustering near one value, so ranking, ties and thresholds get exercised in tests.
SIZES["tiny"]["text"]["initializer_range"] = 0.2
SIZES["tiny32"]["text"]["initializer_range"] = 0.2


def build_config(
    size: str, tokenizer: PreTrainedTokenizerFast, dtype: str = "float32"
) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL config for `size`, with every special token id taken from `tokenizer`."""
    arch, ids = SIZES[size], tokenizer.convert_tokens_to_ids
    vocab = arch["text"].get("vocab_size", -(-len(tokenizer) // 64) * 64)  # round up to 64
    assert vocab >= len(tokenizer)
    special = {
        "bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }  # fmt: skip
    # tie_word_embeddings also inside text_config: transformers 5.19 (vLLM's) reads it there.
    return Qwen2_5_VLConfig(
        text_config={**arch["text"], "vocab_size": vocab, "tie_word_embeddings": False, **special},
        vision_config=dict(arch["vision"]), tie_word_embeddings=False,
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        dtype=dtype, **special,
    )  # fmt: skip


def _generation_config(config: Qwen2_5_VLConfig) -> GenerationConfig:
    """Like Qwen2.5-VL's: stop on <|im_end|> or <|endoftext|>, pad with <|endoftext|>."""
    text = config.text_config
    return GenerationConfig(
        bos_token_id=text.bos_token_id, pad_token_id=text.pad_token_id,
        eos_token_id=[text.eos_token_id, text.pad_token_id],
    )  # fmt: skip


def build_random_model(
    size: str = "tiny", dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
    *, seed: int = 0, min_pixels: int = 28 * 28 * 4, max_pixels: int = 28 * 28 * 64,
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:  # fmt: skip
    """Random model made directly on `device` in `dtype` (no CPU detour, nothing saved) + processor."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    processor = build_processor(min_pixels, max_pixels)
    config = build_config(size, processor.tokenizer, str(dtype).removeprefix("torch."))
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    model.generation_config = _generation_config(config)
    if torch.device(device).type != "meta":
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        assert not bad, f"non-finite random weights: {bad[:5]}"
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("random Qwen2.5-VL %r: %.1fM params, %s on %s", size, n_params / 1e6, dtype, device)
    return model, processor


def build_random_checkpoint(
    path: str | os.PathLike, size: str = "tiny", *, seed: int = 0, dtype: str = "float32",
    min_pixels: int = 28 * 28 * 4, max_pixels: int = 28 * 28 * 64,
) -> pathlib.Path:  # fmt: skip
    """Build and save a random Qwen2.5-VL checkpoint (config, weights, tokenizer, processor,
    chat template) into `path`; return the path."""
    path = pathlib.Path(path)
    model, processor = build_random_model(
        size, dtype, "cpu", seed=seed, min_pixels=min_pixels, max_pixels=max_pixels
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    logger.info("saved random %r checkpoint to %s", size, path)
    return path
