"""The package itself: light import, presets data, public names."""

import re
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("name", ["screening", "precise", "mixed_language", "pipeline"])
def test_each_preset_says_its_threshold_is_not_a_measurement_on_your_images(name):
    basis = get_preset(name).basis
    assert "Calibrate" in basis["en"] and "校准" in basis["zh"]
    assert "measure" in basis["en"]


def test_preset_flags():
    assert PRESETS["precise"].raw_output_expanded and not PRESETS["screening"].raw_output_expanded
    assert PRESETS["mixed_language"].lenient_parsing
    assert PRESETS["pipeline"].fixed_length and not PRESETS["pipeline"].raise_on_error


def test_presets_are_read_only():
    with pytest.raises(TypeError):
        PRESETS["mine"] = PRESETS["precise"]  # type: ignore[index]


ROOT = Path(__file__).resolve().parent.parent


def front_matter() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "README.md").read_text(encoding="utf-8").split("---\n")[1])


def pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return dict(line.split("==") for line in lines if line and not line.startswith("-r"))


def test_the_space_front_matter_targets_zerogpu():
    space = front_matter()
    assert space["sdk"] == "gradio" and space["app_file"] == "app.py"
    assert space["python_version"] in ("3.10", "3.12")  # the Pythons ZeroGPU supports
    assert space["preload_from_hub"] == ["vec-ai/lychee-rerank-mm"]
    assert space["sdk_version"] == pins(ROOT / "requirements.txt")["gradio"]


def test_every_requirement_is_pinned_with_torch_in_the_zerogpu_range():
    for path in (ROOT / "requirements.txt", ROOT / "requirements-dev.txt"):
        lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
        assert all("==" in line or line.startswith("-r") for line in lines if line), path.name
    major, minor = map(int, pins(ROOT / "requirements.txt")["torch"].split(".")[:2])
    assert (2, 8) <= (major, minor) <= (2, 11)


def test_the_suite_runs_on_exactly_the_pinned_versions():
    """What CI tests is what a Space installs."""
    from importlib.metadata import version

    wanted = pins(ROOT / "requirements.txt") | pins(ROOT / "requirements-dev.txt")
    installed = {name: version(name) for name in wanted}
    assert installed == wanted


def test_only_the_web_package_imports_gradio():
    importers = [path.relative_to(ROOT).as_posix() for path in (ROOT / "lychee").rglob("*.py")
                 if re.search(r"^\s*(import|from) (gradio|spaces)\b", path.read_text(encoding="utf-8"), re.M)]
    assert importers and all(path.startswith("lychee/web/") for path in importers), importers


def test_the_documented_web_entry_points_still_import():
    from lychee.ui import build_demo, main
    from lychee.web.app import build_demo as built_here

    assert build_demo is built_here and callable(main)
