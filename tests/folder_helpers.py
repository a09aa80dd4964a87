"""A new user's photo folder in miniature: small captioned images in metadata.jsonl, one corrupt file and one
image without a caption, as the issue that asked for a review in the data set's own terms measured it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (200, 40, 40), "blue": (40, 60, 200), "green": (40, 160, 60), "orange": (230, 140, 30)}
THINGS = ("cat sitting on a chair", "dog on the grass", "cup of tea on a table", "bicycle by a wall", "lamp at night")


def make_photo_folder(folder: Path, n: int = 40, size: int = 24, seed: int = 0) -> Path:
    """n captioned PNGs ("a red cat sitting on a chair", ...) plus corrupt.png and uncaptioned.png."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        thing = THINGS[(i // len(COLOURS)) % len(THINGS)]
        pixels = np.full((size, size, 3), 235, dtype=np.uint8)
        x, y = rng.integers(2, size // 2, size=2)
        pixels[y : y + size // 3, x : x + size // 3] = COLOURS[colour]
        pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
        name = f"photo_{i:03d}.png"
        Image.fromarray(pixels).save(folder / name)
        article = "an" if colour[0] in "aeiou" else "a"
        lines.append(json.dumps({"file_name": name, "text": f"{article} {colour} {thing}"}))
    (folder / "corrupt.png").write_bytes(b"this is not a PNG")
    lines.append(json.dumps({"file_name": "corrupt.png", "text": "a broken file"}))
    Image.fromarray(np.zeros((size, size, 3), dtype=np.uint8)).save(folder / "uncaptioned.png")
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder
