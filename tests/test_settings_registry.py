"""The settings registry: one declaration per setting, every surface read from it, and `top_k` 0
meaning all, with or without a preset, on every surface."""

import dataclasses
from pathlib import Path

import pytest

from lychee.ranking import ScoredImage, rank
from lychee.settings import BY_NAME, RANKING_FIELDS, SETTINGS, Settings, resolve_settings, settings_table
from lychee.web.rest import parse_request
from lychee.web.service import Form, form_settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def test_settings_holds_exactly_the_registrys_ranking_settings():
    fields = [f.name for f in dataclasses.fields(Settings) if f.name != "preset"]
    assert fields == list(RANKING_FIELDS)
    assert {s.name for s in SETTINGS} == {"preset", "instruction", *RANKING_FIELDS}


SAMPLES = {"preset": "screening", "score_threshold": 5.5, "top_k": 3, "instruction": "Judge the photo.",
           "normalize": True, "tie_epsilon": 0.25, "max_side": 512}


def test_the_docs_table_is_generated_from_the_registry():
    assert settings_table() in DOCS.read_text(encoding="utf-8"), "regenerate docs/settings.md's table"


def test_the_cli_takes_exactly_the_flags_the_registry_names_with_their_words_for_none():
    from lychee.cli import build_parser

    parser = build_parser()
    rank = parser._subparsers._group_actions[0].choices["rank"]
    dests = {flag: action.dest for action in rank._actions for flag in action.option_strings}
    for setting in SETTINGS:
        if setting.cli is None:
            assert f"--{setting.name.replace('_', '-')}" not in dests
            continue
        value = SAMPLES[setting.name]
        args = [setting.cli] if setting.kind is bool else [setting.cli, str(value)]
        assert getattr(parser.parse_args(["rank", "q", *args]), dests[setting.cli]) == value
        if setting.none_word:
            assert getattr(parser.parse_args(["rank", "q", setting.cli, setting.none_word]), dests[setting.cli]) is None


def test_rest_reads_exactly_the_fields_the_registry_names():
    for setting in SETTINGS:
        if setting.rest is None:
            continue
        request = parse_request({"query": "q", "documents": ["d"], setting.rest: SAMPLES[setting.name]})
        assert getattr(request, setting.rest) == SAMPLES[setting.name]
    assert {s.rest for s in SETTINGS} - {None} <= {f.name for f in dataclasses.fields(type(request))}


def test_the_page_builds_each_settings_control_from_its_registry_entry(tiny_checkpoint):
    import gradio as gr

    from lychee.web.app import RerankDemo
    from lychee.web.model_slot import ModelSlot

    demo = RerankDemo(ModelSlot(str(tiny_checkpoint), device="cpu", dtype="fp32"))
    demo.build()
    kinds = {"dropdown": gr.Dropdown, "slider": gr.Slider, "textbox": gr.Textbox, "checkbox": gr.Checkbox}
    for setting in SETTINGS:
        component = demo.form_fields[setting.name]
        assert isinstance(component, kinds[setting.control.kind])
        for option, value in setting.control.options.items():
            assert getattr(component, option) == value, (setting.name, option)


def test_an_unknown_setting_is_refused_by_name_on_the_library_and_the_form():
    with pytest.raises(TypeError, match="min_scor"):
        resolve_settings(min_scor=3)
    with pytest.raises(TypeError, match="min_scor"):
        Form("a cat", min_scor=3)


def test_every_default_passes_its_own_check():
    for setting in SETTINGS:
        assert setting.check(setting.default) == setting.default


@pytest.mark.parametrize("preset", [None, "", "screening", "precise", "pipeline"])
def test_top_k_zero_means_all_with_or_without_a_preset_on_the_page_and_the_apis(preset):
    assert form_settings(Form("a cat", preset=preset, top_k=0)).top_k is None
    rest = parse_request({"query": "a cat", "documents": ["x"], "top_n": 0, "preset": preset or None})
    assert form_settings(Form(rest.query, preset=rest.preset, top_k=rest.top_n)).top_k is None


def test_a_setting_left_out_takes_the_presets_value_and_an_explicit_one_wins():
    assert form_settings(Form("a cat", preset="screening")).top_k == BY_NAME["top_k"].check(20)
    assert form_settings(Form("a cat", preset="screening", top_k=None)).top_k == 20
    assert form_settings(Form("a cat", preset="screening", top_k=3)).top_k == 3
    assert form_settings(Form("a cat", preset="screening", score_threshold=None)).score_threshold == 5.0


def test_the_ranking_functions_take_the_registrys_keywords():
    records = [ScoredImage(i, f"{i}.jpg", s, "", None) for i, s in enumerate([3.0, 9.0, 6.0])]
    assert [r.index for r in rank(records, score_threshold=5.0, top_k=1)] == [1]
    with pytest.raises(TypeError):
        rank(records, top_n=1)
