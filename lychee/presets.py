"""Scenario presets, loaded from ``data/presets.json`` shipped in the package."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType


@dataclass(frozen=True)
class Preset:
    """Defaults for one usage scenario; explicit arguments to ``rerank`` win over them."""

    name: str
    label: Mapping[str, str]          # {"zh": ..., "en": ...}
    description: Mapping[str, str]    # {"zh": ..., "en": ...}
    basis: Mapping[str, str]          # what the threshold rests on (a claim or a choice, not a measurement)
    score_threshold: float
    top_k: int
    raw_output_expanded: bool
    lenient_parsing: bool
    raise_on_error: bool
    fixed_length: bool                # reports always show top_k slots, empty ones marked
    explain_top: bool                 # the page shows why #1 scores as it does without being asked


def _load() -> Mapping[str, Preset]:
    text = resources.files("lychee").joinpath("data/presets.json").read_text(encoding="utf-8")
    return MappingProxyType({name: Preset(name=name, **fields) for name, fields in json.loads(text).items()})


PRESETS: Mapping[str, Preset] = _load()
