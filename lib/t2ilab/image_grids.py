"""Labelled image grids: the one place that upscales tiles, wraps labels and lays out cells for every grid t2ilab draws.

Small images (16-64 px) are upscaled by NEAREST so a reader sees the pixels the model made, never a blur of them.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = ImageFont.load_default()
LINE_HEIGHT = 12  # pixels per label line in the default font
GUTTER = 4  # pixels between cells
BLOCK_GAP = 16  # pixels between panels placed side by side


def tile(image, cell: int) -> Image.Image:
    """An RGB tile `cell` pixels square from a uint8 HWC array, a CHW tensor or a PIL image, upscaled NEAREST."""
    if not isinstance(image, Image.Image):
        array = image.permute(1, 2, 0).numpy() if hasattr(image, "permute") else np.asarray(image)
        image = Image.fromarray(array)
    return image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)


def wrap(text: str, width: int, max_lines: int | None = None, font=FONT) -> list[str]:
    """Greedy word wrap to `width` pixels; past `max_lines` (or for a word wider than the cell) the last line ends in '...'."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if font.getlength(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    lines.append(line)
    shown = lines[:max_lines] if max_lines else lines
    truncated = len(shown) < len(lines)
    return [_fit(l, width, truncated and k == len(shown) - 1, font) for k, l in enumerate(shown)]


def _fit(line: str, width: int, cut: bool, font) -> str:
    if not cut and font.getlength(line) <= width:
        return line
    while line and font.getlength(line + "...") > width:
        line = line[:-1]
    return line + "..."


def captioned_grid(images: Sequence, captions: Sequence[Sequence[str]], columns: int, cell: int,
                   min_cell_width: int = 0, label_lines: int = 3) -> Image.Image:
    """Tiles in rows of `columns`, each with its caption lines underneath; narrow tiles are centred in a wider cell."""
    count = len(images)
    columns = max(1, min(columns, count))
    cell_w = max(cell, min_cell_width)
    cell_h = cell + 2 + label_lines * LINE_HEIGHT
    grid = Image.new("RGB", (columns * (cell_w + GUTTER), math.ceil(count / columns) * (cell_h + GUTTER)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, lines) in enumerate(zip(images, captions)):
        x, y = (i % columns) * (cell_w + GUTTER), (i // columns) * (cell_h + GUTTER)
        grid.paste(tile(image, cell), (x + (cell_w - cell) // 2, y))
        for k, line in enumerate(list(lines)[:label_lines]):
            draw.text((x + 2, y + cell + 2 + k * LINE_HEIGHT), line, fill="black", font=FONT)
    return grid


def side_by_side(current: Image.Image, previous: Image.Image | None, labels=("this milestone", "previous milestone")) -> Image.Image:
    """Two grids next to each other under their labels; without a previous grid, the current one, labelled."""
    panels = [(current, labels[0])] + ([(previous, labels[1])] if previous is not None else [])
    width = sum(p.width for p, _ in panels) + BLOCK_GAP * (len(panels) - 1)
    canvas = Image.new("RGB", (width, 16 + max(p.height for p, _ in panels)), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for panel, label in panels:
        draw.text((x + 2, 2), label, fill="black", font=FONT)
        canvas.paste(panel, (x, 16))
        x += panel.width + BLOCK_GAP
    return canvas
