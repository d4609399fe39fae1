"""Why this score? Occlusion maps on the real transformers classes with the tiny random checkpoint:
every number of a map is a score that can be measured again, and bad input is refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageFilter

from lychee import LycheeReranker
from lychee.explain import (
    MAX_CELLS,
    Cell,
    Explanation,
    cell_boxes,
    check_grid,
    default_grid,
    describe_cell,
    occlusion,
    region,
)
from lychee.messages import UserError

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
CAT = SAMPLES / "cat.jpg"
QUERY = "a cat's face, close up"
MAX_SIDE = 224  # 224 x 140 as scored: 8 x 5 patches, a map in seconds
TOLERANCE = {"fp32": 1e-4, "bf16": 0.05}


def rebuilt_copy(scored: Image.Image, box: tuple[int, int, int, int], radius: int) -> Image.Image:
    """The covered copy as the docs define it: the box replaced by the blurred image's same box."""
    fill = scored.filter(ImageFilter.GaussianBlur(radius))
    copy = scored.copy()
    copy.paste(fill.crop(box), box[:2])
    return copy


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def reranker(request, tiny_checkpoint):
    return LycheeReranker(str(tiny_checkpoint), device="cpu", dtype=request.param, batch_size=4), request.param


def test_every_masked_score_is_the_score_of_its_covered_copy(reranker):
    model, dtype = reranker
    explanation = model.explain(QUERY, CAT, max_side=MAX_SIDE)
    scored = model.scored_image(CAT, MAX_SIDE)  # the scoring path's own image
    assert np.array_equal(np.asarray(explanation.image), np.asarray(scored))
    copies = [rebuilt_copy(scored, cell.box, explanation.blur_radius) for cell in explanation.cells]
    direct = model.score(QUERY, copies, max_side=MAX_SIDE)
    for cell, record in zip(explanation.cells, direct, strict=True):
        assert abs(cell.masked_score - record.raw_score) <= TOLERANCE[dtype]
        assert cell.delta == pytest.approx(explanation.score - cell.masked_score)


def test_the_score_is_what_score_gives_the_image(reranker):
    model, dtype = reranker
    explanation = model.explain(QUERY, CAT, max_side=MAX_SIDE)
    (record,) = model.score(QUERY, [CAT], max_side=MAX_SIDE)
    assert abs(explanation.score - record.raw_score) <= TOLERANCE[dtype]


def test_a_map_is_deterministic(tiny_reranker):
    first = tiny_reranker.explain(QUERY, CAT, max_side=MAX_SIDE)
    second = tiny_reranker.explain(QUERY, CAT, max_side=MAX_SIDE)
    assert first == second and first.to_dict() | {"elapsed_s": 0} == second.to_dict() | {"elapsed_s": 0}


def test_a_query_image_and_an_instruction_reach_every_copy(tiny_reranker):
    reference, instruction = SAMPLES / "coffee.jpg", "Judge the animal only."
    explanation = tiny_reranker.explain("", CAT, query_image=reference, instruction=instruction, grid=2,
                                        max_side=MAX_SIDE)
    scored = tiny_reranker.scored_image(CAT, MAX_SIDE)
    copies = [scored] + [rebuilt_copy(scored, c.box, explanation.blur_radius) for c in explanation.cells]
    direct = tiny_reranker.score("", copies, query_image=reference, instruction=instruction, max_side=MAX_SIDE)
    measured = [explanation.score] + [c.masked_score for c in explanation.cells]
    assert [r.raw_score for r in direct] == pytest.approx(measured, abs=TOLERANCE["fp32"])
    data = explanation.to_dict()
    assert (data["query_kind"], data["query_image"], data["instruction"]) == ("image", "coffee.jpg", instruction)


def test_the_map_reports_its_cost_grid_and_method(tiny_reranker):
    seen = []
    explanation = tiny_reranker.explain(QUERY, CAT, grid=(2, 3), max_side=MAX_SIDE,
                                        progress=lambda done, total: seen.append((done, total)))
    data = json.loads(json.dumps(explanation.to_dict()))
    assert data["schema_version"] == 1 and (data["method"], data["fill"]) == ("occlusion", "blur")
    assert data["grid"] == [2, 3] and len(data["cells"]) == 6 and data["forward_passes"] == 7
    assert data["image_size"] == [224, 140] and data["source"] == "cat.jpg"
    assert set(data["cells"][0]) == {"row", "col", "box", "masked_score", "delta"}
    assert seen[-1] == (7, 7)


def test_the_default_grid_of_a_photo_has_16_to_36_cells(tiny_reranker):
    explanation = tiny_reranker.explain(QUERY, CAT, max_side=336)
    rows, cols = explanation.grid
    assert 16 <= rows * cols <= 36 and explanation.forward_passes == rows * cols + 1


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [0, -1, 2.5, True, (3,), (2, 0), "4", (9, 5), (6, 2), 11, [10, 11]])
def test_a_bad_grid_is_refused_in_both_languages(tiny_reranker, grid):
    with pytest.raises(UserError) as caught:
        tiny_reranker.explain(QUERY, CAT, grid=grid, max_side=MAX_SIDE)
    assert caught.value.key == "bad_grid"
    assert "8 columns" in caught.value.bilingual() and "5 行 × 8 列" in caught.value.bilingual()


def test_an_unreadable_image_is_refused_with_its_cause(tiny_reranker):
    with pytest.raises(UserError) as caught:
        tiny_reranker.explain(QUERY, b"not an image at all")
    assert caught.value.key == "bad_image" and "not a readable image" in str(caught.value)
    assert "图片无法使用" in caught.value.bilingual()


def test_an_empty_query_and_a_bad_query_image_get_the_rerank_errors(tiny_reranker):
    with pytest.raises(UserError) as empty:
        tiny_reranker.explain("  ", CAT)
    with pytest.raises(UserError) as reference:
        tiny_reranker.explain("", CAT, query_image=b"\x89PNG\r\n\x1a\nbroken")
    assert (empty.value.key, reference.value.key) == ("empty_query", "bad_query_image")


def test_generate_mode_cannot_explain(tiny_checkpoint):
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", mode="generate")
    with pytest.raises(ValueError, match="mode='logit'"):
        reranker.explain(QUERY, CAT)


def test_a_copy_the_backend_fails_on_is_no_map():
    image = Image.new("RGB", (56, 56))
    with pytest.raises(UserError) as caught:
        occlusion(image, lambda images, _: [5.0] + [RuntimeError("out of memory")] * (len(images) - 1))
    assert caught.value.key == "explain_failed" and "out of memory" in str(caught.value)


# --- the grid, pure -------------------------------------------------------------------------------

sizes = st.tuples(st.integers(1, 60), st.integers(1, 60)).map(lambda p: (28 * p[0], 28 * p[1]))


@given(sizes, st.data())
def test_cells_tile_the_scored_image_exactly_along_patches(size, data):
    patch_cols, patch_rows = size[0] // 28, size[1] // 28
    rows = data.draw(st.integers(1, min(patch_rows, MAX_CELLS)))
    cols = data.draw(st.integers(1, min(patch_cols, MAX_CELLS // rows)))
    cover = np.zeros((size[1], size[0]), dtype=np.int32)
    cells = cell_boxes(size, check_grid((rows, cols), size))
    assert [(r, c) for r, c, _ in cells] == [(r, c) for r in range(rows) for c in range(cols)]
    for _, _, (left, top, right, bottom) in cells:
        assert all(v % 28 == 0 for v in (left, top, right, bottom)) and right > left and bottom > top
        cover[top:bottom, left:right] += 1
    assert (cover == 1).all()


@given(sizes)
def test_the_default_grid_fits_the_patches_and_the_cost_range(size):
    rows, cols = default_grid(size)
    patch_cols, patch_rows = size[0] // 28, size[1] // 28
    assert 1 <= rows <= patch_rows and 1 <= cols <= patch_cols
    if patch_rows * patch_cols >= 36 or (patch_rows * patch_cols >= 16 and min(patch_rows, patch_cols) >= 4):
        assert 16 <= rows * cols <= 36
    elif patch_rows * patch_cols < 16:
        assert (rows, cols) == (patch_rows, patch_cols)


def test_a_square_image_gets_five_by_five_and_a_wide_one_wider_cells_count():
    assert default_grid((448, 448)) == (5, 5)
    rows, cols = default_grid((1316, 728))
    assert cols > rows and 16 <= rows * cols <= 36


# --- words and pictures ---------------------------------------------------------------------------

def test_regions_are_named_by_thirds_in_both_languages():
    size = (300, 300)
    assert region((0, 0, 100, 100), size) == "top_left" and region((100, 100, 200, 200), size) == "centre"
    assert region((200, 100, 300, 200), size) == "right" and region((100, 200, 200, 300), size) == "bottom"
    lowers = Cell(0, 0, (0, 0, 100, 100), 6.9, 2.1)
    raises = Cell(2, 2, (200, 200, 300, 300), 9.35, -0.35)
    assert describe_cell(lowers, size, "en") == "covering the top-left area (row 1, column 1) lowers the score by 2.1"
    assert describe_cell(raises, size, "zh") == "遮住右下区域(第 3 行第 3 列)后分数升高 0.35"


def test_the_overlay_tints_support_red_opposition_blue_and_leaves_neutral_cells_alone():
    image = Image.new("RGB", (84, 28), (128, 128, 128))
    cells = (Cell(0, 0, (0, 0, 28, 28), 5.0, 2.0), Cell(0, 1, (28, 0, 56, 28), 7.0, 0.0),
             Cell(0, 2, (56, 0, 84, 28), 8.0, -1.0))
    explanation = Explanation(7.0, (1, 3), cells, 7, image)
    overlay = np.asarray(explanation.overlay()).astype(int)
    scale = overlay.shape[1] // 84
    assert overlay.shape[0] > 28 * scale  # the legend below the image
    supports, neutral, opposes = (overlay[14 * scale, (28 * i + 14) * scale] for i in range(3))
    assert supports[0] > supports[2] + 40 and opposes[2] > opposes[0] + 20
    assert list(neutral) == [128, 128, 128]
    assert [c.delta for c in explanation.supporting()] == [2.0] and [c.delta for c in explanation.opposing()] == [-1.0]
