"""The settings registry (:data:`SETTINGS`) and the one validator of a request's settings.

Each setting is declared once, as a :class:`Setting`: its name, checker, default, whether it only ranks
the scores or changes them, its one line of documentation, its CLI flag, its REST field and its page
control. :class:`Settings` and its checks, preset filling (:func:`resolve_settings`), the ranking
functions' and the library's keywords, the web form, the page's setting controls and ``docs/settings.md``
read it; the CLI flags and REST fields it names are checked against the parser of each surface by
``tests/test_settings_registry.py``.

Rules (a bool is never a number, NaN and infinities are never valid):

- ``score_threshold``: ``None`` (keep all) or a number from 0 to 10;
- ``top_k``: ``None`` (all) or a whole number >= 1 (``2.0`` reads as 2, ``2.5`` is refused);
- ``tie_epsilon``: a number from 0 to 10;
- ``normalize``: ``True`` or ``False`` (no truthy strings);
- ``max_side``: a whole number of pixels from 64 to 4096;
- ``preset``: ``None`` or one of :data:`~lychee.presets.PRESETS`; it supplies the threshold
  and top_k that were not given (:data:`UNSET`), and explicit values win;
- ``instruction``: ``None`` or text, cleaned with the query (:mod:`lychee.query`), so it lives in the
  request's :class:`~lychee.request.Query`, not in :class:`Settings`.

Surface conventions - the CLI's ``--top-k all``, ``top_k`` 0 on the page and the APIs - are declared
in the registry (:attr:`Setting.none_word`, :attr:`Setting.zero_is_none`); 0 means all with or without
a preset. Every refusal is a
:class:`~lychee.messages.UserError` with the same words in Chinese and English everywhere.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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


def check_instruction(value: Any) -> str | None:
    """None, or text (cleaned and capped with the query, :func:`lychee.query.prepare_text`)."""
    if value is None or isinstance(value, str):
        return value
    raise UserError("not_text", field="instruction", value=_shown(value))


@dataclass(frozen=True)
class Control:
    """How the page shows a setting (plain data: the page, :mod:`lychee.web.app`, makes the component).
    ``key``: its UI text keys ``{key}_label`` and, with ``info``, ``{key}_info``; ``group``: the main
    column or the "Advanced" accordion; ``options``: the component's own arguments."""

    kind: Literal["dropdown", "slider", "textbox", "checkbox"]
    key: str
    group: Literal["main", "advanced"] = "main"
    info: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Setting:
    """One setting of a request, declared once for every surface."""

    name: str                         # the library's keyword, the web form's and /rerank_urls' parameter
    check: Callable[[Any], Any]       # the raw value, checked (UserError) and normalised
    default: Any                      # without a preset
    effect: Literal["ranks", "scores"]  # ranks: applied to stored scores (no model call); scores: new scores
    doc: str                          # one line: API docs, MCP, CLI help, docs/settings.md
    kind: type                        # the JSON/Python type of a value (None aside)
    cli: str | None                   # the CLI flag of ``rank`` (None: the CLI does not take it)
    rest: str | None                  # the POST /v1/rerank field (None: REST does not take it)
    control: Control                  # the page's control
    from_preset: bool = False         # not given: the preset's value, if a preset is chosen
    in_query: bool = False            # cleaned with the query text (the Query holds it, not Settings)
    none_word: str | None = None      # the CLI word for None ("none", "all")
    zero_is_none: bool = False        # 0 on the page and the APIs means None ("all"), preset or not
    cli_metavar: str | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("preset", get_preset, None, "ranks",
            "Scenario preset supplying defaults: " + ", ".join(PRESETS) + "; \"\" or null for none.",
            str, "--preset", "preset", Control("dropdown", "preset", info=False), cli_metavar="NAME"),
    Setting("score_threshold", check_threshold, None, "ranks",
            "Keep images scoring at least this (0-10); null = the preset's value, or keep all.",
            float, "--threshold", "score_threshold",
            Control("slider", "threshold", options={"minimum": 0, "maximum": 10, "step": 0.01}),
            from_preset=True, none_word="none", cli_metavar="X"),
    Setting("top_k", check_top_k, None, "ranks",
            "Keep at most this many images after the threshold (a whole number); null = the preset's value; "
            "0 = all.", int, "--top-k", "top_n", Control("slider", "top_k", options={"minimum": 0, "step": 1}),
            from_preset=True, none_word="all", zero_is_none=True, cli_metavar="K"),
    Setting("instruction", check_instruction, None, "scores",
            "Task instruction for the model (at most 500 characters); \"\" or null = the model's default.",
            str, "--instruction", "instruction", Control("textbox", "instruction", "advanced"), in_query=True,
            cli_metavar="TEXT"),
    Setting("normalize", lambda value: check_flag(value, "normalize"), False, "ranks",
            "true to min-max normalise the scores within this batch onto 0-10 before the threshold.",
            bool, "--normalize", None, Control("checkbox", "normalize", "advanced", info=False)),
    Setting("tie_epsilon", check_tie_epsilon, DEFAULT_TIE_EPSILON, "ranks",
            "Scores closer than this (0-10) to the best of their tie group are tied (\"tied\": true).",
            float, "--tie-epsilon", "tie_epsilon",
            Control("slider", "tie_epsilon", "advanced", options={"minimum": 0, "maximum": 1, "step": 0.01}),
            cli_metavar="E"),
    Setting("max_side", check_max_side, DEFAULT_MAX_SIDE, "scores",
            f"Longest image side in pixels before scoring (a whole number, {MAX_SIDE_RANGE[0]}-{MAX_SIDE_RANGE[1]});"
            " smaller is faster.", int, None, None,
            Control("slider", "max_side", "advanced", options={"minimum": 256, "maximum": DEFAULT_MAX_SIDE,
                                                               "step": 64})),
)
BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
RANKING_FIELDS = tuple(s.name for s in SETTINGS if not s.in_query and s.name != "preset")  # Settings' values


def surface_value(setting: Setting, value: Any) -> Any:
    """A value as the page and the APIs send it, in the library's terms: None for a preset-filled
    setting means the preset's value (:data:`UNSET`); 0 where it means all is None, preset or not;
    "" for a text setting is None."""
    if value is None:
        return UNSET
    if setting.zero_is_none and value == 0 and not isinstance(value, bool):
        return None
    if setting.kind is str and value == "":
        return None
    return value


@dataclass(frozen=True)
class Settings:
    """Validated settings of one request, the preset's defaults filled in: the non-query settings of
    :data:`SETTINGS`. Valid by construction: each field is checked by its registry entry (and a whole
    float such as ``top_k=2.0`` stored as an int) when it is built, so code that receives a
    ``Settings`` never checks again."""

    preset: Preset | None = None
    score_threshold: float | None = None
    top_k: int | None = None
    normalize: bool = False
    tie_epsilon: float = DEFAULT_TIE_EPSILON
    max_side: int = DEFAULT_MAX_SIDE

    def __post_init__(self) -> None:
        if self.preset is not None and not isinstance(self.preset, Preset):
            raise TypeError(f"preset must be a Preset or None (see resolve_settings), got {self.preset!r}")
        for name in RANKING_FIELDS:
            object.__setattr__(self, name, BY_NAME[name].check(getattr(self, name)))

    @property
    def lenient_parsing(self) -> bool:
        return self.preset.lenient_parsing if self.preset else False


def resolve_settings(preset: Any = None, **given: Any) -> Settings:
    """Check every setting and fill in the defaults: a setting not given (or :data:`UNSET`) takes the
    preset's value where the preset has one, else its registry default; ``UserError`` names the first
    problem. ``given``: any of :data:`RANKING_FIELDS`."""
    unknown = set(given) - set(RANKING_FIELDS)
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}; the settings are "
                        f"{', '.join(RANKING_FIELDS)}")
    chosen = get_preset(preset)
    values = {}
    for name in RANKING_FIELDS:
        setting, value = BY_NAME[name], given.get(name, UNSET)
        if value is UNSET:
            value = getattr(chosen, name) if setting.from_preset and chosen else setting.default
        values[name] = value
    return Settings(preset=chosen, **values)


def settings_table() -> str:
    """``docs/settings.md``'s table: every setting of :data:`SETTINGS` on every surface."""
    rows = ["| setting | default | effect | library / `/rerank_urls` / MCP | `POST /v1/rerank` | CLI | page |"
            " what it does |", "|---|---|---|---|---|---|---|---|"]
    for s in SETTINGS:
        effect = "re-ranks (no model call)" if s.effect == "ranks" else "re-scores"
        metavar = "|".join(filter(None, (s.cli_metavar, s.none_word)))
        flag = "—" if s.cli is None else f"`{s.cli} {metavar}`" if metavar else f"`{s.cli}`"
        rest = "—" if s.rest is None else f"`{s.rest}`"
        page = f"{s.control.kind} ({s.control.group})"
        rows.append(f"| `{s.name}` | `{s.default!r}` | {effect} | `{s.name}=` | {rest} | {flag} | {page} |"
                    f" {s.doc.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
