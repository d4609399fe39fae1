"""Parse a 0-10 relevance score out of a model's free-text answer (generate mode).

Accepted, in order of preference (full-width characters are folded first, so
``得分：７．９`` reads as ``得分:7.9``):

1. a labelled score: ``Score: 8.2``, ``score=9.1``, ``final score is 7``, ``得分:7.9``,
   ``评分 8``, ``分数：6.5``;
2. a score out of ten: ``8.2/10``, ``8.2 / 10``, ``8.2 out of 10``, ``8.2分``;
3. an answer that is just a number: ``7.5``, ``7.5.``;
4. only when ``lenient`` is true: the last number between 0 and 10 anywhere in the text
   (``I'd say about 7, maybe``).

Anything else - no number, a number outside 0-10, NaN - is unparseable: ``None``.
"""

from __future__ import annotations

import math
import re
import unicodedata

_NUMBER = r"([+-]?\d+(?:\.\d+)?)"
_LABELLED = re.compile(
    r"(?:score|rating|relevance|得分|评分|分数|打分|分值)\s*(?:is|of|为|是)?\s*[:=]?\s*" + _NUMBER,
    re.IGNORECASE,
)
_OUT_OF_TEN = re.compile(r"(?<!\d)" + _NUMBER + r"\s*(?:/\s*10(?:\.0+)?\b|out of 10\b|分)", re.IGNORECASE)
_BARE = re.compile(r"^\s*" + _NUMBER + r"\s*[.。!]?\s*$")
_ANY = re.compile(r"(?<![\d.])" + _NUMBER + r"(?![\d.]*\s*/\s*(?!10)\d)")


def _in_range(text: str | None) -> float | None:
    if text is None:
        return None
    value = float(text)
    return value if math.isfinite(value) and 0.0 <= value <= 10.0 else None


def parse_score(text: str, *, lenient: bool = False) -> float | None:
    """Return the 0-10 score stated in ``text``, or ``None`` when there is none."""
    folded = unicodedata.normalize("NFKC", text or "")
    for pattern in (_LABELLED, _OUT_OF_TEN):
        matches = pattern.findall(folded)
        if matches:
            return _in_range(matches[-1])
    bare = _BARE.match(folded)
    if bare:
        return _in_range(bare.group(1))
    if lenient:
        candidates = [v for v in map(_in_range, _ANY.findall(folded)) if v is not None]
        return candidates[-1] if candidates else None
    return None
