"""lychee: rerank images against a Chinese/English/mixed text query with lychee-rerank-mm.

``import lychee`` stays light: torch and transformers load on first use of
``LycheeReranker``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .presets import PRESETS, Preset
from .ranking import RerankResult, ScoredImage, winner_strength

if TYPE_CHECKING:
    from .reranker import LycheeReranker, RerankError

__all__ = ["LycheeReranker", "RerankError", "RerankResult", "ScoredImage", "PRESETS", "Preset",
           "winner_strength"]


def __getattr__(name: str) -> Any:
    if name in ("LycheeReranker", "RerankError"):
        from . import reranker

        return getattr(reranker, name)
    raise AttributeError(f"module 'lychee' has no attribute {name!r}")
