"""The one validator of a request's settings, called by the library, the CLI and the web API.

Rules (a bool is never a number, NaN and infinities are never valid):

- ``score_threshold``: ``None`` (keep all) or a number from 0 to 10;
- ``top_k``: ``None`` (all) or a whole number >= 1 (``2.0`` reads as 2, ``2.5`` is refused);
- ``tie_epsilon``: a number from 0 to 10;
- ``normalize``: ``True`` or ``False`` (no truthy strings);
- ``max_side``: a whole number of pixels from 64 to 4096;
- ``preset``: ``None`` or one of :data:`~lychee.presets.PRESETS`; it supplies the threshold
  and top_k that were not given (:data:`UNSET`), and explicit values win.

Surface conventions - the CLI's ``--top-k all``, the web page's ``top_k`` 0 - are
translated by the surface before it calls :func:`resolve_settings`. Every refusal is a
:class:`~lychee.messages.UserError` with the same words in Chinese and English everywhere.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

from .messages import UserError
from .presets import PRESETS, Preset

DEFAULT_MAX_SIDE = 1920          # images are pre-scaled so the longest side is at most this
MAX_SIDE_RANGE = (64, 4096)
DEFAULT_TIE_EPSILON = 0.05
TIE_EPSILON_RANGE = (0.0, 10.0)


class Unset(enum.Enum):
    """The type of :data:`UNSET`."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset.UNSET  # an argument's default meaning "not given": the preset, if any, decides


def _number(value: Any, low: float, high: float, *, whole: bool = False) -> float | int | None:
    """``value`` as a float (an int if ``whole``) when it is a real number in [low, high]; else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        if not math.isfinite(value):
            return None
    except OverflowError:  # an int too large for a float (10**400) is no valid setting
        return None
    if not low <= value <= high or (whole and not float(value).is_integer()):
        return None
    return int(value) if whole else float(value)


def _shown(value: Any) -> str:
    try:
        return repr(value)[:80]
    except ValueError:  # an int of more digits than Python will print
        return "a number too large to show"


def check_threshold(value: Any) -> float | None:
    if value is None:
        return None
    checked = _number(value, 0.0, 10.0)
    if checked is None:
        raise UserError("bad_threshold", value=_shown(value))
    return checked


def check_top_k(value: Any) -> int | None:
    if value is None:
        return None
    checked = _number(value, 1, math.inf, whole=True)
    if checked is None:
        raise UserError("bad_top_k", value=_shown(value))
    return int(checked)


def check_tie_epsilon(value: Any) -> float:
    checked = _number(value, *TIE_EPSILON_RANGE)
    if checked is None:
        raise UserError("bad_tie_epsilon", value=_shown(value))
    return checked


def check_max_side(value: Any) -> int:
    low, high = MAX_SIDE_RANGE
    checked = _number(value, low, high, whole=True)
    if checked is None:
        raise UserError("bad_max_side", low=low, high=high, value=_shown(value))
    return int(checked)


def check_flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise UserError("bad_flag", field=field, value=_shown(value))
    return value


def get_preset(name: Any) -> Preset | None:
    """The preset called ``name`` (None and "" mean no preset)."""
    if name is None or name == "":
        return None
    if not isinstance(name, str) or name.strip() not in PRESETS:
        raise UserError("unknown_preset", preset=_shown(name), choices=", ".join(PRESETS))
    return PRESETS[name.strip()]


@dataclass(frozen=True)
class Settings:
    """Validated settings of one request, the preset's defaults filled in. Valid by construction:
    each field is checked (and a whole float such as ``top_k=2.0`` stored as an int) when it is
    built, so code that receives a ``Settings`` never checks again."""

    preset: Preset | None = None
    score_threshold: float | None = None
    top_k: int | None = None
    normalize: bool = False
    tie_epsilon: float = DEFAULT_TIE_EPSILON
    max_side: int = DEFAULT_MAX_SIDE

    def __post_init__(self) -> None:
        if self.preset is not None and not isinstance(self.preset, Preset):
            raise TypeError(f"preset must be a Preset or None (see resolve_settings), got {self.preset!r}")
        checked = {"score_threshold": check_threshold(self.score_threshold), "top_k": check_top_k(self.top_k),
                   "normalize": check_flag(self.normalize, "normalize"),
                   "tie_epsilon": check_tie_epsilon(self.tie_epsilon), "max_side": check_max_side(self.max_side)}
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def lenient_parsing(self) -> bool:
        return self.preset.lenient_parsing if self.preset else False

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (the preset by name)."""
        return {"preset": self.preset.name if self.preset else None, "score_threshold": self.score_threshold,
                "top_k": self.top_k, "normalize": self.normalize, "tie_epsilon": self.tie_epsilon,
                "max_side": self.max_side}


def resolve_settings(preset: Any = None, *, score_threshold: Any = UNSET, top_k: Any = UNSET,
                     normalize: Any = False, tie_epsilon: Any = DEFAULT_TIE_EPSILON,
                     max_side: Any = DEFAULT_MAX_SIDE) -> Settings:
    """Check every setting and fill in the preset's defaults; ``UserError`` names the first problem."""
    chosen = get_preset(preset)
    if score_threshold is UNSET:
        score_threshold = chosen.score_threshold if chosen else None
    if top_k is UNSET:
        top_k = chosen.top_k if chosen else None
    return Settings(preset=chosen, score_threshold=score_threshold, top_k=top_k, normalize=normalize,
                    tie_epsilon=tie_epsilon, max_side=max_side)
