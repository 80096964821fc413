"""Sample grids for the MLflow pages: a column per sampling step count and a labelled row per evaluation (a run's
`samples.png`) or per trial (a sweep's `sweep_samples.png`), so quality against steps, training and settings
reads at a glance. The layout is fixed (CELL-pixel cells under a header), so a grid can be cut back into its
rows: a restarted run appends to the rows it had logged, and a sweep takes each trial's last row.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CELL = 240  # px, square
LABEL_W = 220
HEAD_H = 30
FONT_PX = 15
LABEL_BG = (255, 248, 220)  # cornsilk: the label column (a colour MLflow's UI never uses, so a test can find the grid)


def _font():
    try:
        return ImageFont.load_default(size=FONT_PX)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def row(label: str, cells: list[Image.Image | None]) -> Image.Image:
    """A row: `label` (wrapped) on the left, then the cells scaled to CELL x CELL (a blank one for None)."""
    strip = Image.new("RGB", (LABEL_W + CELL * len(cells), CELL), "white")
    draw = ImageDraw.Draw(strip)
    draw.rectangle((0, 0, LABEL_W - 6, CELL - 3), fill=LABEL_BG)
    draw.multiline_text((8, 8), "\n".join(textwrap.wrap(label, 24)[:12]), fill="black", font=_font(), spacing=3)
    for i, cell in enumerate(cells):
        if cell is not None:
            strip.paste(cell.convert("RGB").resize((CELL, CELL), Image.LANCZOS), (LABEL_W + i * CELL, 0))
    return strip


def stack(columns: list[str], rows: list[Image.Image]) -> Image.Image:
    """The column headers over the rows."""
    width = max([LABEL_W + CELL * len(columns), *(r.width for r in rows)])
    grid = Image.new("RGB", (width, HEAD_H + CELL * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for i, name in enumerate(columns):
        draw.text((LABEL_W + i * CELL + CELL // 2, HEAD_H // 2), name, fill="black", font=_font(), anchor="mm")
    for j, r in enumerate(rows):
        grid.paste(r, (0, HEAD_H + j * CELL))
    return grid


def rows_of(grid: Image.Image) -> list[Image.Image]:
    """The rows of a grid made by `stack`."""
    n = (grid.height - HEAD_H) // CELL
    return [grid.crop((0, HEAD_H + j * CELL, grid.width, HEAD_H + (j + 1) * CELL)) for j in range(n)]


def cells_of(strip: Image.Image) -> list[Image.Image]:
    n = (strip.width - LABEL_W) // CELL
    return [strip.crop((LABEL_W + i * CELL, 0, LABEL_W + (i + 1) * CELL, CELL)) for i in range(n)]


def step_columns(steps: list[int]) -> list[str]:
    return [f"{k} step" + ("s" if k > 1 else "") for k in steps]


def save(grid: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)
    return path


def evaluation_row(step: int, samples: dict, folder: Path, reference=None) -> tuple[list[str], Image.Image]:
    """(column headers, row) of a run's grid for the evaluation at `step`: per sampling step count, a scatter plot of
    2D samples (over faint `reference` points of the data) or a grid of images (latents get a blank cell: they are
    drawn once decoded). The cells' PNGs are written under `folder`."""
    from imm.sampling.pictures import image_grid_png, scatter_png

    cells = []
    for k, x in sorted(samples.items()):
        out = folder / f"step_{step:07d}_steps_{k}.png"
        if x.ndim == 4 and x.shape[1] in (1, 3):
            image_grid_png(x, out)
        elif x.ndim == 2 and x.shape[-1] == 2:
            scatter_png(x, out, title=f"step {step}, {k} sampling step(s)", reference=reference)
        cells.append(Image.open(out).copy() if out.is_file() else None)
    return step_columns(sorted(samples)), row(f"training step {step}", cells)
