"""Query hints: words with no visual anchor are found in Chinese, English and mixed text."""

from __future__ import annotations

import json
from importlib import resources

from lychee.query_hints import CATEGORIES, QueryHint, query_hints


def words(query: str) -> list[str]:
    return [h.word for h in query_hints(query)]


def test_concrete_queries_get_no_hints():
    assert query_hints("一只黑猫趴在木质窗台上,阳光斜射") == []
    assert query_hints("a black cat on a red sofa, soft window light") == []


def test_empty_query_gets_no_hints():
    assert query_hints("") == []


def test_chinese_taste_words_and_intensifiers_are_flagged():
    assert query_hints("非常好看的科技感海报") == [
        QueryHint("非常", "intensifier"), QueryHint("好看", "subjective"), QueryHint("科技感", "subjective")]


def test_english_words_are_flagged_case_insensitively_as_written():
    assert query_hints("A Very Beautiful sunset") == [
        QueryHint("Very", "intensifier"), QueryHint("Beautiful", "subjective")]


def test_english_words_match_whole_words_only():
    assert words("a niceville sign, coolant bottle, everyday scene") == []


def test_english_words_are_found_inside_chinese_text():
    assert words("一只nice猫坐在very red的沙发上") == ["nice", "very"]


def test_allowed_phrases_hide_the_flagged_word_inside_them():
    assert words("很多猫,cool tones, 特别是橘猫") == []
    assert words("很多猫,很可爱") == ["很"]


def test_each_word_is_reported_once_in_order_of_appearance():
    assert words("very very nice, Nice") == ["very", "nice"]


def test_every_listed_word_is_flagged_on_its_own():
    data = json.loads(resources.files("lychee").joinpath("data/query_hints.json").read_text(encoding="utf-8"))
    for category in CATEGORIES:
        for word in data[category]:
            assert query_hints(word) == [QueryHint(word, category)], word

