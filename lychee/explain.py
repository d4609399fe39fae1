"""Why this score? An occlusion map: how much of an image's score each region carries.

The image is taken as the model scores it - decoded, pre-scaled and fitted to the pixel
budget (``LycheeReranker.scored_image``) - and cut into a grid of cells along its 28-px
patches (one visual token each). For every cell, a copy of the image with that cell covered
is scored; the image and all its copies go to the backend in one batched call, with the same
query, query image and instruction, so the method is the same on every backend (transformers,
vllm, vllm-server). ``delta = score - masked_score``: positive where the region carries the
match, negative where it argues against it. Each number is the score of a real image that
anyone can rebuild from the cell's box and the fill and score again.

The cover is a blur: the cell is replaced by the same region of the whole image blurred by
Pillow's ``GaussianBlur(blur_radius)``. A flat grey or mean-coloured square would bring sharp
new edges and a flat texture the vision tower never sees in photos; the model reacts to the
square itself, so even a cell of empty sky would get a delta. A blurred cell keeps the
region's colours and brightness and meets its neighbours without an edge, and takes away what
objects are recognised by - edges, texture, shape - so its delta measures what the region's
detail carries. (A blur keeps a large object's colour blob: the map under-reads regions whose
colour alone identifies them.)

Cost: cells + 1 forward passes. The default grid has 16-36 cells, as square as the patches
allow. Pure: no torch, no gradio.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .backends.base import Progress
from .messages import Language, UserError
from .protocol import PATCH_PIXELS, query_kind

SCHEMA_VERSION = 1
METHOD = "occlusion"
FILL = "blur"
DEFAULT_CELLS = (16, 25, 36)  # the default grid's fewest, preferred and most cells
MAX_CELLS = 100               # a requested grid's most cells: each one is a forward pass

Grid = tuple[int, int]                # (rows, cols)
Box = tuple[int, int, int, int]       # (left, top, right, bottom) in the scored image's pixels
# Scores 0-10 of the images, in order, or the exception an image raised.
ScoreImages = Callable[[list[Image.Image], Progress | None], list[float | Exception]]

# The overlay: red where covering lowers the score, blue where it raises it (ColorBrewer RdBu ends).
SUPPORTS_RGB, OPPOSES_RGB = np.array([178, 24, 43]), np.array([33, 102, 172])
MAX_OPACITY = 0.65
MIN_OVERLAY_WIDTH = 360  # smaller images are scaled up (nearest) so the legend stays legible
LEGEND_HEIGHT = 54


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: its place, its box and the score of the image with it covered."""

    row: int
    col: int
    box: Box
    masked_score: float
    delta: float  # score - masked_score: > 0 the region supports the match, < 0 it argues against it

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "col": self.col, "box": list(self.box), "masked_score": self.masked_score,
                "delta": self.delta}


@dataclass(frozen=True)
class Explanation:
    """An occlusion map of one image's score (see the module docstring).

    ``image`` is the scored image the boxes refer to; ``to_dict()`` leaves it out.
    """

    score: float
    grid: Grid
    cells: tuple[Cell, ...]
    blur_radius: int
    image: Image.Image = field(repr=False, compare=False)
    query: str = ""
    source: str = ""
    query_image: str | None = None
    instruction: str | None = None
    model: dict[str, str] = field(default_factory=dict, compare=False)
    elapsed_s: float = field(default=0.0, compare=False)
    method: str = METHOD
    fill: str = FILL

    @property
    def forward_passes(self) -> int:
        """The image itself and one copy per cell."""
        return len(self.cells) + 1

    def supporting(self, n: int = 3) -> list[Cell]:
        """Up to ``n`` cells whose cover lowers the score most (delta > 0), strongest first."""
        return sorted((c for c in self.cells if c.delta > 0), key=lambda c: -c.delta)[:n]

    def opposing(self, n: int = 3) -> list[Cell]:
        """Up to ``n`` cells whose cover raises the score most (delta < 0), strongest first."""
        return sorted((c for c in self.cells if c.delta < 0), key=lambda c: c.delta)[:n]

    def strongest(self, n: int = 3) -> list[Cell]:
        """Up to ``n`` cells with the largest ``|delta|``, either sign."""
        return sorted((c for c in self.cells if c.delta), key=lambda c: -abs(c.delta))[:n]

    def describe(self, cell: Cell, lang: Language) -> str:
        """One line on ``cell``: "covering the top-left area (row 1, column 2) lowers the score by 2.1"."""
        return describe_cell(cell, self.image.size, lang)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (schema version 1)::

            {"schema_version": 1, "method": "occlusion", "fill": "blur", "blur_radius": int,
             "query": str, "query_kind": "text" | "image" | "image+text", "query_image": str | null,
             "instruction": str | null, "source": str, "score": float, "image_size": [width, height],
             "grid": [rows, cols], "forward_passes": int,
             "cells": [{"row", "col", "box": [left, top, right, bottom], "masked_score", "delta"}, ...],
             "model": {...}, "elapsed_s": float}

        Rows and columns count from 0; boxes are in the scored image's pixels (``image_size``).
        """
        return {
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "fill": self.fill,
            "blur_radius": self.blur_radius,
            "query": self.query,
            "query_kind": query_kind(self.query, self.query_image is not None),
            "query_image": self.query_image,
            "instruction": self.instruction,
            "source": self.source,
            "score": self.score,
            "image_size": list(self.image.size),
            "grid": list(self.grid),
            "forward_passes": self.forward_passes,
            "cells": [c.to_dict() for c in self.cells],
            "model": dict(self.model),
            "elapsed_s": round(self.elapsed_s, 4),
        }

    def overlay(self, *, legend: bool = True) -> Image.Image:
        """The scored image under a diverging heat map of the deltas (red: covering lowers the
        score; blue: it raises it; opacity grows with ``|delta|``), the grid drawn in, and a legend
        below it (``legend=False``: none). An image under 360 px wide is scaled up first."""
        return draw_overlay(self.image, self.cells, legend=legend)


# --- the grid -----------------------------------------------------------------------------------

def patch_counts(size: tuple[int, int]) -> Grid:
    """(rows, cols) of 28-px patches in a scored image of ``size`` (width, height)."""
    width, height = size
    return height // PATCH_PIXELS, width // PATCH_PIXELS


def default_grid(size: tuple[int, int]) -> Grid:
    """16-36 cells, each as square as whole patches allow (then the count nearest 25); an image
    of fewer than 16 patches gets one cell per patch."""
    patch_rows, patch_cols = patch_counts(size)
    fewest, preferred, most = DEFAULT_CELLS
    grids = [(r, c) for r in range(1, patch_rows + 1) for c in range(1, patch_cols + 1) if fewest <= r * c <= most]
    if not grids:
        return patch_rows, patch_cols

    def badness(grid: Grid) -> tuple[float, int, int]:
        rows, cols = grid
        return abs(math.log((patch_rows / rows) / (patch_cols / cols))), abs(rows * cols - preferred), rows

    return min(grids, key=badness)


def check_grid(grid: Any, size: tuple[int, int]) -> Grid:
    """``grid`` as (rows, cols): None for :func:`default_grid`, a whole number N for N x N, or a
    pair; each side from 1 to the image's patches along it, at most ``MAX_CELLS`` cells."""
    if grid is None:
        return default_grid(size)
    patch_rows, patch_cols = patch_counts(size)
    pair = (grid, grid) if isinstance(grid, int) else tuple(grid) if isinstance(grid, (tuple, list)) else ()
    if (len(pair) != 2 or any(isinstance(n, bool) or not isinstance(n, int) for n in pair)
            or not (1 <= pair[0] <= patch_rows and 1 <= pair[1] <= patch_cols) or pair[0] * pair[1] > MAX_CELLS):
        raise UserError("bad_grid", value=repr(grid)[:80], rows=patch_rows, cols=patch_cols, max_cells=MAX_CELLS)
    return pair


def parse_grid(value: Any) -> int | tuple[int, int] | None:
    """A grid as surfaces receive it - None or "" (the default), N, "N", "RxC", [R, C] - in the
    form :func:`check_grid` takes; ``UserError('bad_grid_form')`` for anything else."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts: list[Any] = []
    if isinstance(value, str):
        try:
            parts = [int(part) for part in value.lower().replace("×", "x").split("x")]
        except ValueError:
            parts = []
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, (int, float)):
        parts = [value]
    wholes = [int(p) for p in parts if not isinstance(p, bool) and isinstance(p, (int, float))
              and float(p).is_integer() and p >= 1]
    if len(parts) not in (1, 2) or len(wholes) != len(parts):
        raise UserError("bad_grid_form", value=repr(value)[:80])
    return wholes[0] if len(wholes) == 1 else (wholes[0], wholes[1])


def cell_boxes(size: tuple[int, int], grid: Grid) -> list[tuple[int, int, Box]]:
    """``(row, col, box)`` of every cell, row by row: whole patches, split as evenly as they go,
    tiling the image exactly."""
    (patch_rows, patch_cols), (rows, cols) = patch_counts(size), grid
    ys = [i * patch_rows // rows * PATCH_PIXELS for i in range(rows + 1)]
    xs = [j * patch_cols // cols * PATCH_PIXELS for j in range(cols + 1)]
    return [(r, c, (xs[c], ys[r], xs[c + 1], ys[r + 1])) for r in range(rows) for c in range(cols)]


def blur_radius(size: tuple[int, int], grid: Grid) -> int:
    """Half the mean side of a cell, in pixels: enough to take a cell's detail away."""
    width, height = size
    return max(1, round((width / grid[1] + height / grid[0]) / 4))


def blurred(image: Image.Image, radius: int) -> Image.Image:
    """The fill: the whole image under ``GaussianBlur(radius)``."""
    return image.filter(ImageFilter.GaussianBlur(radius))


def covered(image: Image.Image, box: Box, fill: Image.Image) -> Image.Image:
    """A copy of ``image`` with ``box`` replaced by the same region of ``fill``."""
    copy = image.copy()
    copy.paste(fill.crop(box), box[:2])
    return copy


# --- the map --------------------------------------------------------------------------------------

def occlusion(image: Image.Image, score_images: ScoreImages, *, grid: Any = None,
              progress: Progress | None = None, **context: Any) -> Explanation:
    """The occlusion map of ``image`` (already as scored) under ``score_images``, which scores a
    list of images in one batched call. ``context`` fills the :class:`Explanation`'s ``query``,
    ``source``, ``query_image``, ``instruction`` and ``model``.

    A bad ``grid`` raises ``UserError('bad_grid')`` before anything is scored; a copy the backend
    failed on raises ``UserError('explain_failed')``: a map with a hole in it is not a map.
    """
    rows_cols = check_grid(grid, image.size)
    started = time.perf_counter()
    boxes = cell_boxes(image.size, rows_cols)
    radius = blur_radius(image.size, rows_cols)
    fill = blurred(image, radius)
    scores = score_images([image, *(covered(image, box, fill) for _, _, box in boxes)], progress)
    failed = next((s for s in scores if isinstance(s, Exception)), None)
    if failed is not None:
        raise UserError("explain_failed", reason=str(failed)[:300] or type(failed).__name__)
    score, masked = scores[0], scores[1:]
    cells = tuple(Cell(r, c, box, m, score - m) for (r, c, box), m in zip(boxes, masked))
    return Explanation(score, rows_cols, cells, radius, image, elapsed_s=time.perf_counter() - started, **context)


# --- words and pictures ---------------------------------------------------------------------------

@cache
def strings() -> dict[str, dict[str, str]]:
    """The explanations' words in zh/en (``data/explain.json``): region names, the sentence about a
    cell, the legend."""
    return json.loads(resources.files("lychee").joinpath("data/explain.json").read_text(encoding="utf-8"))


def region(box: Box, size: tuple[int, int]) -> str:
    """Where ``box``'s centre lies in the image, by thirds: ``top_left`` ... ``centre`` ... ``bottom_right``."""
    width, height = size
    x, y = (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height
    vertical = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    horizontal = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    return "_".join(part for part in (vertical, horizontal) if part) or "centre"


def amount(value: float) -> str:
    """A score difference for people: three significant digits (2.1, 0.35, 0.00412)."""
    return f"{abs(value):.3g}"


def describe_cell(cell: Cell, size: tuple[int, int], lang: Language) -> str:
    """"covering the top-left area (row 1, column 2) lowers the score by 2.1", in ``lang``."""
    words = strings()
    verb = "lowers" if cell.delta > 0 else "raises" if cell.delta < 0 else "keeps"
    return words[f"covering_{verb}"][lang].format(
        region=words[f"region_{region(cell.box, size)}"][lang], row=cell.row + 1, col=cell.col + 1,
        amount=amount(cell.delta))


def legend_label(lang: Language) -> str:
    """What the overlay's colours mean, in ``lang``."""
    return strings()["legend"][lang]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # a Pillow without FreeType has only the bitmap font
        return ImageFont.load_default()


def _colour(value: float) -> np.ndarray:
    """``value`` in [-1, 1] on the diverging scale: white at 0, red at +1, blue at -1."""
    end = SUPPORTS_RGB if value > 0 else OPPOSES_RGB
    return 255 + (end - 255) * min(1.0, abs(value))


def draw_overlay(image: Image.Image, cells: Sequence[Cell], *, legend: bool = True) -> Image.Image:
    """``image`` with each cell tinted by its delta, relative to the largest ``|delta|``, and a legend."""
    scale = max(1, math.ceil(MIN_OVERLAY_WIDTH / image.width))
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    largest = max((abs(c.delta) for c in cells), default=0.0)
    for cell in cells:
        share = abs(cell.delta) / largest if largest else 0.0
        left, top, right, bottom = cell.box
        region_pixels = pixels[top:bottom, left:right]
        opacity = MAX_OPACITY * share
        region_pixels[:] = region_pixels * (1 - opacity) + _colour(math.copysign(share, cell.delta)) * opacity
    heat = Image.fromarray(pixels.round().astype(np.uint8))
    heat = heat.resize((heat.width * scale, heat.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(heat)
    for cell in cells:
        left, top, right, bottom = (v * scale for v in cell.box)
        draw.rectangle((left, top, right - 1, bottom - 1), outline=(255, 255, 255))
    return _with_legend(heat, largest) if legend else heat


def _with_legend(heat: Image.Image, largest: float) -> Image.Image:
    canvas = Image.new("RGB", (heat.width, heat.height + LEGEND_HEIGHT), (255, 255, 255))
    canvas.paste(heat, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    margin, bar_top, bar_height = 10, heat.height + 6, 12
    bar_width = heat.width - 2 * margin
    for x in range(bar_width):
        colour = _colour(2 * x / max(1, bar_width - 1) - 1)  # blue, white, red
        draw.line((margin + x, bar_top, margin + x, bar_top + bar_height), fill=tuple(int(v) for v in colour))
    draw.rectangle((margin, bar_top, margin + bar_width, bar_top + bar_height), outline=(120, 120, 120))
    text_top = bar_top + bar_height + 3
    draw.text((margin, text_top), f"-{amount(largest)}", fill=(33, 102, 172), font=font)
    draw.text((heat.width // 2, text_top), "0", fill=(60, 60, 60), font=font, anchor="ma")
    draw.text((heat.width - margin, text_top), f"+{amount(largest)}", fill=(178, 24, 43), font=font, anchor="ra")
    caption = legend_label("en")
    draw.text((heat.width // 2, text_top + 14), caption, fill=(60, 60, 60), font=_font(11), anchor="ma")
    return canvas

