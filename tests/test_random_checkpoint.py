"""Tests for lychee.random_checkpoint: the tiny random Qwen2.5-VL checkpoint loads and runs."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Qwen2_5_VLForConditionalGeneration,
)

from lychee.random_checkpoint import SIZES, SPECIAL_TOKENS, build_random_checkpoint

MAX_PIXELS = 28 * 28 * 16


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory):
    return build_random_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def loaded(ckpt):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt).eval()
    return AutoProcessor.from_pretrained(ckpt), model


def test_tokenizer_and_config_ids(loaded) -> None:
    processor, model = loaded
    tok = processor.tokenizer
    for word in ("yes", "no"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(SPECIAL_TOKENS)
    for t, i in ids.items():
        assert tok.encode(t, add_special_tokens=False) == [i]
    cfg = model.config
    assert cfg.image_token_id == ids["<|image_pad|>"] and cfg.video_token_id == ids["<|video_pad|>"]
    assert cfg.vision_start_token_id == ids["<|vision_start|>"]
    assert cfg.vision_end_token_id == ids["<|vision_end|>"]
    assert cfg.text_config.eos_token_id == ids["<|im_end|>"] == tok.eos_token_id
    assert cfg.text_config.pad_token_id == ids["<|endoftext|>"] == tok.pad_token_id
    assert cfg.text_config.hidden_size == SIZES["tiny"]["text"]["hidden_size"] == 64
    assert cfg.text_config.vocab_size >= len(tok)


def test_forward_with_image(loaded) -> None:
    processor, model = loaded
    image = Image.new("RGB", (64, 48), color=(200, 30, 30))
    content = [{"type": "image"}, {"type": "text", "text": "一只黑猫? Judge: yes or no"}]
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>一只黑猫?" in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    inputs = processor(text=[text], images=[image], return_tensors="pt", padding=True)
    n_visual = int(inputs["image_grid_thw"].prod()) // 4
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == n_visual
    with torch.no_grad():
        logits = model(**inputs, logits_to_keep=1).logits
    assert logits.shape == (1, 1, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_max_pixels_respected(loaded) -> None:
    processor, _ = loaded
    big = Image.new("RGB", (640, 480), color=(0, 128, 255))
    out = processor.image_processor(images=[big], return_tensors="pt")
    assert int(out["image_grid_thw"].prod()) // 4 <= MAX_PIXELS // (28 * 28)


def test_seeded_and_auto_class(ckpt, tmp_path) -> None:
    again = build_random_checkpoint(tmp_path / "again", "tiny", max_pixels=MAX_PIXELS)
    other = build_random_checkpoint(tmp_path / "other", "tiny", seed=1)
    a = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt).state_dict()
    b = AutoModelForImageTextToText.from_pretrained(again).state_dict()
    c = Qwen2_5_VLForConditionalGeneration.from_pretrained(other).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
