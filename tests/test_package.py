"""The package itself: light import, presets data, public names."""

import subprocess
import sys

import pytest

import lychee
from lychee.presets import PRESETS
from lychee.settings import get_preset


def test_import_loads_neither_gradio_nor_torch():
    code = "import sys, lychee; print(sorted(m for m in ('gradio', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names():
    assert {"LycheeReranker", "RerankResult", "PRESETS"} <= set(lychee.__all__)
    assert lychee.LycheeReranker.__name__ == "LycheeReranker"
    with pytest.raises(AttributeError):
        lychee.NoSuchThing  # noqa: B018


@pytest.mark.parametrize(("name", "threshold", "top_k"), [
    ("screening", 5.0, 20), ("precise", 8.0, 1), ("mixed_language", 6.5, 5), ("pipeline", 7.0, 3)])
def test_presets_match_the_specification(name, threshold, top_k):
    preset = get_preset(name)
    assert (preset.score_threshold, preset.top_k) == (threshold, top_k)
    assert preset.label["zh"] and preset.label["en"]
    assert preset.description["zh"] and preset.description["en"]


def test_preset_flags():
    assert PRESETS["precise"].raw_output_expanded and not PRESETS["screening"].raw_output_expanded
    assert PRESETS["mixed_language"].lenient_parsing
    assert PRESETS["pipeline"].fixed_length and not PRESETS["pipeline"].raise_on_error


def test_presets_are_read_only():
    with pytest.raises(TypeError):
        PRESETS["mine"] = PRESETS["precise"]  # type: ignore[index]
