"""The model's own tokenizer, for what the rerank API counts and cuts in tokens: ``usage`` and the
peers' per-document and per-query token limits (Cohere's ``max_tokens_per_doc``, vLLM's
``max_tokens_per_query`` and ``truncate_prompt_tokens``). Loaded once per model, apart from any backend,
so a vLLM server's model counts alike."""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

log = logging.getLogger(__name__)


class TokenCounter:
    """Counts and cuts text in the model's tokens (no special tokens: the prompt template adds its own)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False)) if text else 0

    def truncate(self, text: str, limit: int) -> str:
        """``text`` cut to its first ``limit`` tokens (itself when it has no more), as vLLM cuts."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= limit else self.tokenizer.decode(ids[:limit])


@cache
def token_counter(model: str) -> TokenCounter:
    """The tokenizer of ``model`` (a hub id or a checkpoint directory), loaded on first use."""
    from transformers import AutoTokenizer

    log.info("loading the tokenizer of %s for token counts", model)
    return TokenCounter(AutoTokenizer.from_pretrained(model))
