"""Image quality of a checkpoint, measured: judge scores with 95% intervals, a sampler sweep that answers the old
guide's claims, short vs detailed prompts, review grids (quality_review.py puts them into one review).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from t2ilab import image_grids
from t2ilab.config import CATEGORIES, ConfigError, read_yaml
from t2ilab.datasets import shapes
from t2ilab.image_grids import side_by_side  # noqa: F401 (quality's API: review grids this milestone vs the last)
from t2ilab.paths import REVIEW_PROMPTS
from t2ilab.review import judge
from t2ilab.review.sweep_verdicts import Z, _compare, answer_guide_claims, best_settings  # noqa: F401 (quality's API)
from t2ilab.sampling.pipeline import T2IPipeline, load_pipeline, valid_schedulers
from t2ilab.training import text

DEFAULT_SWEEP = {"schedulers": ("ddpm", "ddim", "dpmsolver++", "unipc", "euler"), "steps": (10, 20, 50, 100),
                 "guidance_scales": (1.0, 2.0, 4.0, 7.5), "n_per_category": 8}
QUICK_SWEEP = {"schedulers": ("ddim", "dpmsolver++"), "steps": (10, 25), "guidance_scales": (1.0, 3.0), "n_per_category": 4}
_CEILINGS: dict[tuple[int, int], pd.DataFrame] = {}  # (resolution, n per category) -> judge_ceiling frame


def load_review_prompts(path: str | Path = REVIEW_PROMPTS) -> dict:
    """{"prompts", "seeds", "prompt_pairs", "prompt_seeds"} from a YAML file; errors name the file and field."""
    raw = read_yaml(path)

    def fail(field: str, why: str) -> ConfigError:
        return ConfigError(f"{path}: {field} {why} (see configs/review_prompts.yaml for the format)")

    prompts, pairs = raw.get("prompts"), raw.get("prompt_pairs", [])
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise fail("prompts", "must be a non-empty list of prompt strings")
    seeds = {}
    for field in ("seeds", "prompt_seeds"):
        value = raw.get(field, [0, 1, 2, 3])
        if not isinstance(value, list) or not value or not all(isinstance(s, int) and s >= 0 for s in value):
            raise fail(field, f"must be a non-empty list of integers >= 0, got {value!r}")
        seeds[field] = value
    if not isinstance(pairs, list):
        raise fail("prompt_pairs", "must be a list of {short: ..., detailed: ...}")
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict) or set(pair) != {"short", "detailed"} or not all(isinstance(v, str) for v in pair.values()):
            raise fail(f"prompt_pairs[{i}]", f"must have exactly the string keys short and detailed, got {pair!r}")
    return {"prompts": prompts, "prompt_pairs": pairs, **seeds}


def as_pipeline(checkpoint: str | Path | T2IPipeline, weights: str = "ema", device=None) -> T2IPipeline:
    """A loaded pipeline (passed through when its weights match) from a checkpoint folder or a pipeline."""
    if isinstance(checkpoint, T2IPipeline):
        if checkpoint.weights == weights or checkpoint.checkpoint_path is None:
            return checkpoint
        checkpoint = checkpoint.checkpoint_path
    return load_pipeline(checkpoint, weights=weights, device=device)


@contextmanager
def _sampler(pipe: T2IPipeline, name: str | None):
    """Switch the pipeline's sampler for a block and put the caller's back afterwards."""
    before = pipe.scheduler
    if name is not None:
        pipe.set_scheduler(name)
    try:
        yield pipe
    finally:
        pipe.scheduler = before


def generate_images(pipe: T2IPipeline, prompts: list[str], seeds: list[int], steps: int = 25, guidance: float = 3.0,
                    batch_size: int = 64) -> np.ndarray:
    """uint8 (N, H, W, 3) images, one per (prompt, seed), in batches; uses the pipeline's current sampler."""
    out = [pipe(prompts[i : i + batch_size], seed=seeds[i : i + batch_size], num_inference_steps=steps,
                guidance_scale=guidance, output_type="np").images for i in range(0, len(prompts), batch_size)]
    return np.concatenate(out)


def judging_prompts(n_per_category: int, categories=CATEGORIES, seed: int = 0) -> tuple[list[dict], list[int]]:
    """(specs, noise seeds): item i of a category depends only on (seed, category, i), so N grows by extension."""
    specs, seeds = [], []
    for category in categories:
        for i in range(n_per_category):
            rng = np.random.default_rng([seed, CATEGORIES.index(category), i])
            specs.append(shapes.sample_spec(category, rng))
            seeds.append(int(rng.integers(2**31)))
    return specs, seeds


def generate_for_judging(pipe: T2IPipeline, n_per_category: int, categories=CATEGORIES, seed: int = 0,
                         scheduler: str | None = None, steps: int = 25, guidance: float = 3.0,
                         batch_size: int = 64) -> tuple[np.ndarray, list[dict]]:
    """(uint8 images, specs) for the fixed judging prompts; every checkpoint sees the same prompts and noise."""
    specs, seeds = judging_prompts(n_per_category, categories, seed)
    with _sampler(pipe, scheduler):
        images = generate_images(pipe, [shapes.caption_for(s) for s in specs], seeds, steps, guidance, batch_size)
    return images, specs


def ceiling_scores(resolution: int, n_per_category: int = 200) -> pd.DataFrame:
    """judge.judge_ceiling at a resolution (the judge's accuracy on real renders), cached in-process."""
    key = (resolution, n_per_category)
    if key not in _CEILINGS:
        _CEILINGS[key] = judge.judge_ceiling(n_per_category, resolution)
    return _CEILINGS[key]


def score_checkpoint(checkpoint, n_per_category: int = 200, scheduler: str = "dpmsolver++", steps: int = 25,
                     guidance: float = 3.0, weights: str = "ema", seed: int = 0, batch_size: int = 64,
                     ceiling_n: int = 200) -> pd.DataFrame:
    """judge.category_scores of generated images (n, accuracy, Wilson 95% CI per category and overall) + ceiling.

    The skills, each judged on its own, ride along as records: `pd.DataFrame(scores.attrs["skills"])` is
    judge.skill_scores of the same images (skill, n, accuracy, ci_low, ci_high).
    """
    pipe = as_pipeline(checkpoint, weights)
    images, specs = generate_for_judging(pipe, n_per_category, CATEGORIES, seed, scheduler, steps, guidance, batch_size)
    judged = judge.judge_images(images, specs)
    scores = judge.category_scores(judged)
    # Records, not a frame: pandas compares attrs when concatenating, which a DataFrame value cannot take.
    scores.attrs["skills"] = judge.skill_scores(judged).to_dict(orient="records")
    ceiling = ceiling_scores(pipe.resolution, ceiling_n).set_index("category")["accuracy"]
    scores["ceiling"] = scores["category"].map(ceiling)
    scores["ceiling_n"] = ceiling_n
    scores.attrs["settings"] = {"scheduler": scheduler, "steps": steps, "guidance": guidance, "weights": pipe.weights,
                                "n_per_category": n_per_category, "seed": seed}
    return scores


def sampler_sweep(checkpoint, schedulers=DEFAULT_SWEEP["schedulers"], steps=DEFAULT_SWEEP["steps"],
                  guidance_scales=DEFAULT_SWEEP["guidance_scales"], n_per_category: int = 8, weights: str = "ema",
                  seed: int = 0, batch_size: int = 64, categories=CATEGORIES) -> pd.DataFrame:
    """One row per (scheduler, steps, guidance): overall accuracy, 95% CI, per-category accuracy, seconds_per_image.

    Samplers the checkpoint's objective cannot use are left out (a flow-matching model sweeps flow_euler only).
    """
    pipe = as_pipeline(checkpoint, weights)
    valid = valid_schedulers(pipe.scheduler.config)
    schedulers = [s for s in schedulers if s in valid] or list(valid)
    specs, seeds = judging_prompts(n_per_category, categories, seed)
    prompts = [shapes.caption_for(s) for s in specs]
    for warm_guidance in (1.0, 2.0):  # warm-up at the real batch shapes: a CPU's first call per shape is slow
        generate_images(pipe, prompts[:batch_size], seeds[:batch_size], 1, warm_guidance, batch_size)
    rows = []
    for scheduler, n_steps, guidance in product(schedulers, steps, guidance_scales):
        with _sampler(pipe, scheduler):
            start = time.perf_counter()
            images = generate_images(pipe, prompts, seeds, int(n_steps), float(guidance), batch_size)
            seconds = time.perf_counter() - start  # generation only: the judge's time is not the sampler's
            # UNet forward passes per image: the machine-independent cost (wall clock on a shared CPU can vary 5x).
            evals = len(pipe.scheduler.timesteps) * (2 if guidance > 1 else 1)
        scores = judge.category_scores(judge.judge_images(images, specs)).set_index("category")
        overall = scores.loc["overall"]
        rows.append({"scheduler": scheduler, "steps": int(n_steps), "guidance": float(guidance), "n": len(images),
                     "n_per_category": n_per_category, "accuracy": overall["accuracy"], "ci_low": overall["ci_low"],
                     "ci_high": overall["ci_high"], **{c: scores.loc[c, "accuracy"] for c in categories},
                     "seconds_per_image": seconds / len(images), "unet_evals_per_image": evals})
    return pd.DataFrame(rows)


_GRAMMAR_WORDS = {"a", "an", "and", *shapes.SIZES, *shapes.COLORS, *shapes.SHAPES, *(s + "s" for s in shapes.SHAPES),
                  *shapes.NUMBER_WORDS.values(), *(w for r in shapes.RELATIONS for w in r.split()),
                  *(w for p in shapes.POSITION_PHRASES.values() for w in p.split())}


def judged_core(prompt: str) -> tuple[str | None, dict | None]:
    """(caption, spec) the judge checks for a prompt: the prompt itself if in the grammar, else its in-grammar core."""
    spec = shapes.parse_caption(prompt)
    if spec is not None:
        return shapes.caption_for(spec), spec
    # "a beautiful red circle, high quality" -> clause "a beautiful red circle" -> "a red circle"
    for clause in prompt.split(","):
        core = " ".join(w for w in text.caption_words(clause) if w in _GRAMMAR_WORDS)
        spec = shapes.parse_caption(core) if core else None
        if spec is not None:
            return shapes.caption_for(spec), spec
    return None, None


def prompt_comparison(checkpoint, pairs: list[dict], seeds=(0, 1, 2, 3), scheduler: str = "dpmsolver++",
                      steps: int = 25, guidance: float = 3.0, weights: str = "ema", batch_size: int = 64) -> pd.DataFrame:
    """Short vs detailed prompts, two rows per pair: judge accuracy on each prompt's own claim and on the short one's."""
    pipe = as_pipeline(checkpoint, weights)
    prompts = [(i, role, pair[role]) for i, pair in enumerate(pairs) for role in ("short", "detailed")]
    seeds = list(seeds)
    with _sampler(pipe, scheduler):
        images = generate_images(pipe, [p for _, _, p in prompts for _ in seeds], seeds * len(prompts), steps, guidance, batch_size)
    rows = []
    for k, (i, role, prompt) in enumerate(prompts):
        batch = images[k * len(seeds) : (k + 1) * len(seeds)]
        judged_as, spec = judged_core(prompt)
        _, short_spec = judged_core(pairs[i]["short"])
        row = {"pair": i, "role": role, "prompt": prompt, "in_grammar": shapes.parse_caption(prompt) is not None,
               "judged_as": judged_as, "unknown_words": text.unknown_words(prompt, pipe.vocabulary or []), "n": len(seeds)}
        for name, claim in (("", spec), ("short_claim_", short_spec)):
            hits = sum(judge.judge_image(image, claim)["correct"] for image in batch) if claim else None
            low, high = judge.wilson_interval(hits, len(seeds)) if claim else (None, None)
            row.update({f"{name}accuracy": hits / len(seeds) if claim else None, f"{name}ci_low": low, f"{name}ci_high": high})
        rows.append(row)
    return pd.DataFrame(rows)


GRID_CELL = 96  # target pixels per image side in grids (NEAREST upscale by an integer factor)
GUTTER, BLOCK_GAP, LABEL_WIDTH = image_grids.GUTTER, image_grids.BLOCK_GAP, 170  # between images, blocks; prompt labels


def grid_layout(n_prompts: int, n_seeds: int, n_blocks: int, resolution: int) -> dict:
    """Pixel geometry of review_grid: scale, cell, header and total size (width, height)."""
    scale = max(1, GRID_CELL // resolution)
    cell = resolution * scale
    header = 30
    width = LABEL_WIDTH + n_blocks * n_seeds * (cell + GUTTER) + (n_blocks - 1) * BLOCK_GAP
    return {"scale": scale, "cell": cell, "header": header, "size": (width, header + n_prompts * (cell + GUTTER))}


def review_grid(checkpoint, prompts: list[str], seeds=(0, 1, 2, 3), scheduler: str = "dpmsolver++", steps: int = 25,
                guidance: float = 3.0, weights=("ema", "raw"), batch_size: int = 64) -> Image.Image:
    """Rows = prompts, columns = seeds; one block per weights (EMA, raw) side by side; labelled, NEAREST upscaled."""
    seeds = list(seeds)
    blocks = []
    for which in weights:
        pipe = as_pipeline(checkpoint, which)
        if any(name == pipe.weights for name, _ in blocks):
            continue  # no unet_ema/ in this checkpoint: "ema" fell back to the raw weights already shown
        with _sampler(pipe, scheduler):
            blocks.append((pipe.weights, generate_images(pipe, [p for p in prompts for _ in seeds], seeds * len(prompts),
                                                         steps, guidance, batch_size)))
    layout = grid_layout(len(prompts), len(seeds), len(blocks), blocks[0][1].shape[1])
    cell, header, font = layout["cell"], layout["header"], image_grids.FONT
    canvas = Image.new("RGB", layout["size"], "white")
    draw = ImageDraw.Draw(canvas)
    for b, (name, images) in enumerate(blocks):
        x0 = LABEL_WIDTH + b * (len(seeds) * (cell + GUTTER) + BLOCK_GAP)
        draw.text((x0, 2), f"{name.upper()} weights", fill="black", font=font)
        for s, seed in enumerate(seeds):
            draw.text((x0 + s * (cell + GUTTER), 16), f"seed {seed}", fill="gray", font=font)
            for p in range(len(prompts)):
                canvas.paste(image_grids.tile(images[p * len(seeds) + s], cell), (x0 + s * (cell + GUTTER), header + p * (cell + GUTTER)))
    draw.text((4, 2), f"{scheduler}, {steps} steps", fill="black", font=font)
    draw.text((4, 16), f"guidance {guidance}", fill="black", font=font)
    for p, prompt in enumerate(prompts):
        for k, line in enumerate(image_grids.wrap(prompt, LABEL_WIDTH - 8, cell // 12)):
            draw.text((4, header + p * (cell + GUTTER) + 2 + 12 * k), line, fill="black", font=font)
    return canvas


def sample_like_dataset(checkpoint, dataset, n: int = 256, seed: int = 0, scheduler: str | None = None, steps: int = 25,
                        guidance: float = 3.0, weights: str = "ema", batch_size: int = 64,
                        only: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, data set indices): n images drawn from captions of random training images, fixed seeds.

    `only`: positions among the n to draw (the same prompts and seeds, so the same images up to batch rounding),
    e.g. the few a memorization figure shows, instead of all n again."""
    pipe = as_pipeline(checkpoint, weights)
    rng = np.random.default_rng([seed, 2])
    index = np.sort(rng.choice(dataset.train_idx, size=min(n, len(dataset.train_idx)), replace=False))
    seeds = [int(s) for s in rng.integers(2**31, size=len(index))]
    if only is not None:
        index, seeds = index[list(only)], [seeds[i] for i in only]
    with _sampler(pipe, scheduler):
        images = generate_images(pipe, [dataset.captions[i] for i in index], seeds, steps, guidance, batch_size)
    return images, index
