"""Model FLOPs of scoring one (query, image) pair with a Qwen2.5-VL model: pure arithmetic.

A multiply-add is 2 FLOPs, so a linear layer of ``n_in x n_out`` weights costs
``2 * n_in * n_out`` per row it is applied to (Kaplan et al. 2020, "Scaling Laws for Neural
Language Models", section 2.1; the PaLM paper's appendix B counts MFU the same way).
Norms, activations, rotary embeddings and softmax are left out (well under 1 %).

For the exact Qwen2.5-VL-7B architecture at 1280 visual tokens plus ~80 prompt tokens this gives
~25 TFLOP per pair: ~18 in the language model's linear layers (6.5 B weights outside the
embedding and the head, x 2 x 1360 tokens), ~0.4 in its causal attention, ~7 in the vision
tower (0.63 B weights over 5120 patches, plus full attention in 4 of its 32 blocks). The
issue's "about 29 TFLOP" also counts the embedding table and the 152k-vocabulary head at every
position as matmuls (2 x 7.6 B x 1360); the lookup is no matmul, and our path applies the
head at one position only, so those FLOPs are not counted as useful work here.
"""

from __future__ import annotations

from typing import Any


def language_model_flops(text_config: Any, tokens: int, *, logits_positions: int = 1) -> float:
    """FLOPs of the decoder over ``tokens`` tokens, with the vocabulary head at
    ``logits_positions`` positions (1 on our path, every position in a plain call)."""
    hidden, layers = text_config.hidden_size, text_config.num_hidden_layers
    kv_width = text_config.num_key_value_heads * (hidden // text_config.num_attention_heads)
    # q and o are hidden x hidden, k and v hidden x kv_width (grouped-query attention);
    # the gated MLP has gate, up and down projections.
    weights_per_layer = 2 * hidden * hidden + 2 * hidden * kv_width + 3 * hidden * text_config.intermediate_size
    linear = 2 * layers * weights_per_layer * tokens
    # Causal attention: Q.K^T and P.V each cover tokens^2 / 2 (query, key) pairs of width hidden.
    attention = 2 * layers * tokens**2 * hidden
    head = 2 * hidden * text_config.vocab_size * logits_positions
    return float(linear + attention + head)


def vision_tower_flops(vision_config: Any, patches: int) -> float:
    """FLOPs of the vision tower over one image of ``patches`` 14x14 patches."""
    width, depth = vision_config.hidden_size, vision_config.depth
    patch_pixels = vision_config.in_channels * vision_config.temporal_patch_size * vision_config.patch_size**2
    embed = 2 * patches * patch_pixels * width
    # Per block: qkv (3 w^2) and proj (w^2), then a gated MLP (3 w x intermediate).
    blocks = 2 * depth * patches * (4 * width * width + 3 * width * vision_config.intermediate_size)
    # Non-causal attention (Q.K^T and P.V: 4 FLOPs per (query, key) pair and channel): over the
    # whole image in the full-attention blocks, within 112x112-pixel windows in the others.
    window = (vision_config.window_size // vision_config.patch_size) ** 2
    full_blocks = len(vision_config.fullatt_block_indexes)
    attention = 4 * patches * width * (full_blocks * patches + (depth - full_blocks) * min(window, patches))
    # The merger: 2x2 patches concatenated, then a two-layer MLP into the language model's width.
    merged_width = width * vision_config.spatial_merge_size**2
    merger = 2 * (patches // vision_config.spatial_merge_size**2) * merged_width * (
        merged_width + vision_config.out_hidden_size)
    return float(embed + blocks + attention + merger)


def pair_flops(config: Any, visual_tokens: int, text_tokens: int, *, logits_positions: int = 1) -> float:
    """Model FLOPs of one pair: the vision tower over the image, then the language model
    over the prompt's text tokens plus the image's visual tokens."""
    patches = visual_tokens * config.vision_config.spatial_merge_size**2
    return (vision_tower_flops(config.vision_config, patches)
            + language_model_flops(config.text_config, visual_tokens + text_tokens,
                                   logits_positions=logits_positions))
