"""The quality review in a folder data set's own terms: prompts are held-out validation captions (plus your own
review prompts), and each generated image is shown next to the real held-out image of the same caption.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from t2ilab import image_grids
from t2ilab.config import load_config
from t2ilab.datasets.data import DataWarning, ImageCaptionSet, load_dataset
from t2ilab.paths import REVIEW_PROMPTS
from t2ilab.review import quality
from t2ilab.training import text

HELDOUT = "held-out caption"
YOURS = "your review prompt"


def user_prompts(prompts_file: str | Path | None) -> tuple[list[str], list[int] | None]:
    """(prompts, seeds) of a review prompts file the user set; ([], None) for none or the bundled shapes prompts."""
    if prompts_file is None or not Path(prompts_file).is_file():
        return [], None
    if Path(prompts_file).read_bytes() == REVIEW_PROMPTS.read_bytes():
        return [], None  # the shapes prompts: nothing to do with a folder of photos
    prompts = quality.load_review_prompts(prompts_file)
    return prompts["prompts"], prompts["seeds"]


def review_rows(dataset: ImageCaptionSet, vocabulary: list[str] | None, k: int = 8,
                prompts_file: str | Path | None = None) -> list[dict]:
    """Grid rows: the first k held-out captions (with their real image) then the user's prompts; unknown words each."""
    rows = [{"prompt": dataset.captions[i], "source": HELDOUT, "real_index": int(i)} for i in dataset.val_idx[:k]]
    rows += [{"prompt": p, "source": YOURS, "real_index": None} for p in user_prompts(prompts_file)[0]]
    for row in rows:
        row["unknown_words"] = text.unknown_words(row["prompt"], vocabulary or [])
    return rows


def sample_heldout(checkpoint, dataset: ImageCaptionSet, n: int = 256, seed: int = 0, scheduler: str | None = None,
                   steps: int = 25, guidance: float = 3.0, weights: str = "ema", batch_size: int = 64,
                   only: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, data set indices): n images drawn from the held-out captions in turn, fixed seeds.

    Image j uses the caption of held-out image index[j], so index[j] is its real counterpart. `only`: positions
    among the n to draw again (the same prompts and seeds), as quality.sample_like_dataset."""
    if len(dataset.val_idx) == 0:
        raise ValueError("the folder review needs held-out images: set data.val_fraction > 0")
    pipe = quality.as_pipeline(checkpoint, weights)
    rng = np.random.default_rng([seed, 4])
    index = np.resize(dataset.val_idx, n)  # every held-out caption in turn, as often as n allows
    seeds = [int(s) for s in rng.integers(2**31, size=n)]
    if only is not None:
        index, seeds = index[list(only)], [seeds[i] for i in only]
    with quality._sampler(pipe, scheduler):
        images = quality.generate_images(pipe, [dataset.captions[i] for i in index], seeds, steps, guidance, batch_size)
    return images, index


def heldout_grid(checkpoint, dataset: ImageCaptionSet, rows: list[dict], seeds=(0, 1, 2, 3),
                 scheduler: str = "dpmsolver++", steps: int = 25, guidance: float = 3.0) -> Image.Image:
    """quality.review_grid of the rows' prompts with a "real held-out" column between the prompts and the seeds."""
    grid = quality.review_grid(checkpoint, [r["prompt"] for r in rows], list(seeds), scheduler, steps, guidance)
    layout = quality.grid_layout(len(rows), len(seeds), 1, dataset.images.shape[-1])
    cell, header, gap = layout["cell"], layout["header"], quality.BLOCK_GAP
    column = Image.new("RGB", (cell + gap, grid.height), "white")
    draw, font = ImageDraw.Draw(column), image_grids.FONT
    draw.text((0, 2), "real", fill="black", font=font)
    draw.text((0, 16), "held-out", fill="gray", font=font)
    for p, row in enumerate(rows):
        y = header + p * (cell + quality.GUTTER)
        if row["real_index"] is None:
            draw.text((4, y + cell // 2 - 6), "none", fill="gray", font=font)  # your prompt: no real image
            continue
        column.paste(image_grids.tile(dataset.images[row["real_index"]], cell), (0, y))
    canvas = Image.new("RGB", (grid.width + column.width, grid.height), "white")
    canvas.paste(grid.crop((0, 0, quality.LABEL_WIDTH, grid.height)), (0, 0))
    canvas.paste(column, (quality.LABEL_WIDTH, 0))
    canvas.paste(grid.crop((quality.LABEL_WIDTH, 0, grid.width, grid.height)), (quality.LABEL_WIDTH + column.width, 0))
    return canvas


def review_grids(checkpoint, previous_checkpoint, review: dict, prompts_file: str | Path | None,
                 data_cache_dir: str | Path | None = None) -> Image.Image:
    """The review's grids, this milestone next to the previous one: held-out captions for folder data, else shapes."""
    labels = (f"epoch {review.get('epoch')}", "previous milestone")
    if not review.get("heldout"):
        prompts = quality.load_review_prompts(prompts_file)
        grids = [quality.review_grid(c, prompts["prompts"], prompts["seeds"], **review["sampling"]) if c else None
                 for c in (checkpoint, previous_checkpoint)]
        return quality.side_by_side(grids[0], grids[1], labels)
    overrides = [f"data.cache_dir={data_cache_dir}"] if data_cache_dir else None
    with warnings.catch_warnings():  # skipped files: the review's first cell has said so already
        warnings.simplefilter("ignore", DataWarning)
        dataset = load_dataset(load_config(Path(checkpoint) / "config.yaml", overrides).data)
    rows, seeds = review["heldout"]["rows"], user_prompts(prompts_file)[1] or [0, 1, 2, 3]
    grids = [heldout_grid(c, dataset, rows, seeds, **review["sampling"]) if c else None
             for c in (checkpoint, previous_checkpoint)]
    return quality.side_by_side(grids[0], grids[1], labels)
