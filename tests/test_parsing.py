"""Score parsing in generate mode: real-world answer formats, Chinese punctuation, garbage."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lychee.parsing import parse_score


@pytest.mark.parametrize(("text", "expected"), [
    ("Score: 8.2", 8.2),
    ("score:8", 8.0),
    ("SCORE = 9", 9.0),
    ("final score=9.1", 9.1),
    ("The final score is 6.5.", 6.5),
    ("Rating: 3", 3.0),
    ("得分:7.9", 7.9),
    ("得分：7.9", 7.9),          # full-width colon
    ("得分：７．９", 7.9),        # full-width digits and point
    ("评分 8", 8.0),
    ("分数为6", 6.0),
    ("8.2/10", 8.2),
    ("8.2 / 10", 8.2),
    ("7 out of 10", 7.0),
    ("8.2分", 8.2),
    ("这张图片很符合描述,8分", 8.0),
    ("7.5", 7.5),
    ("  10  ", 10.0),
    ("0", 0.0),
    ("7.5.", 7.5),
    ("Looks close. Score: 4, then on reflection Score: 6", 6.0),  # the last stated score wins
])
def test_formats_are_read(text, expected):
    assert parse_score(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "yes", "no score here", "Score: 11", "Score: -1", "Score: nan",
                                  "12/10", "得分:十", "∞", "Score: abc"])
def test_unreadable_or_out_of_range_gives_none(text):
    assert parse_score(text) is None


def test_strict_mode_needs_a_stated_score():
    assert parse_score("I would say about 7, maybe", lenient=True) == 7.0
    assert parse_score("I would say about 7, maybe", lenient=False) is None
    assert parse_score("Score: 7", lenient=False) == 7.0


def test_lenient_mode_skips_numbers_outside_the_scale():
    assert parse_score("out of 100 pictures this one is a 9", lenient=True) == 9.0
    assert parse_score("there are 25 cats", lenient=True) is None


@given(st.text())
def test_any_text_gives_none_or_a_score_on_the_scale(text):
    for lenient in (True, False):
        value = parse_score(text, lenient=lenient)
        assert value is None or (math.isfinite(value) and 0.0 <= value <= 10.0)


@given(st.floats(min_value=0, max_value=10, allow_nan=False).map(lambda v: round(v, 2)),
       st.sampled_from(["Score: {}", "得分:{}", "得分：{}", "{}/10", "{}分", "final score={}"]))
def test_every_format_round_trips_any_score(value, template):
    assert parse_score(template.format(value)) == pytest.approx(value)
