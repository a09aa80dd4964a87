"""What the notebooks call between their parameters and the library: run configs whose relative paths start at
the repo root (notebooks run in notebooks/), resume previews, the log up to a checkpoint, and quality-review tables.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from t2ilab.config import PATH_FIELDS, Config, ConfigError, load_config, rebase_paths  # noqa: F401  (re-exported)
from t2ilab.review.diagnose import read_metrics
from t2ilab.training.checkpoint import read_manifest, resolve_checkpoint
from t2ilab.training.resume import ResumePlan, plan_resume


def load_run_config(config_path: str | Path, overrides: list[str] | None = None, root: str | Path = "..") -> Config:
    """load_config(config_path, overrides) with relative paths inside the config taken from `root`."""
    return rebase_paths(load_config(config_path, overrides), root)


def resume_config(output_dir: str | Path, checkpoint: str = "latest", num_epochs: int | None = None,
                  learning_rate: float | None = None, root: str | Path = "..") -> tuple[Config, Path]:
    """(config to resume with, checkpoint folder): the checkpoint's own config with the given changes."""
    out = Path(output_dir).resolve()
    ckpt = resolve_checkpoint(checkpoint, out)
    overrides = [f"output_dir={out}"]
    if num_epochs is not None:
        overrides.append(f"training.num_epochs={int(num_epochs)}")
    if learning_rate is not None:
        overrides.append(f"training.learning_rate={float(learning_rate)!r}")
    return rebase_paths(load_config(ckpt / "config.yaml", overrides), root), ckpt


def preview_resume(cfg: Config, checkpoint: Path, root: str | Path = "..") -> ResumePlan:
    """The resume plan training will print, computed without building the model (errors surface here)."""
    from t2ilab.datasets.data import data_fingerprint
    from t2ilab.training.checkpoint import load_training_state

    optimizer, _, _, state = load_training_state(checkpoint)
    # Rebased like `cfg`, so a relative data.cache_dir does not show up as a change.
    old_cfg = rebase_paths(load_config(checkpoint / "config.yaml"), root)
    # Steps per epoch from the position in the run: exact while the batch size is unchanged, which is the
    # common case; the trainer recomputes it from the data set either way.
    full_epochs_steps = state["global_step"] - state.get("step_in_epoch", 0)
    steps_per_epoch = full_epochs_steps // max(1, state["epoch"]) or 1
    current_lr = optimizer["param_groups"][0]["lr"]
    return plan_resume(checkpoint, state, old_cfg, cfg, data_fingerprint(cfg.data), steps_per_epoch, current_lr, 1)


def metrics_until(run_dir: str | Path, checkpoint: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) frames of a run's metrics.jsonl, cut at `checkpoint`'s global step when one is given."""
    train, val = read_metrics(run_dir)
    if checkpoint is None:
        return train, val
    step = read_manifest(resolve_checkpoint(checkpoint, run_dir)).get("global_step")
    if step is None:
        raise ConfigError(f"checkpoint {checkpoint} has no global_step in its manifest; cannot cut the log there")
    cut_train = train[train["step"] <= step].reset_index(drop=True)
    cut_val = val[val["step"] <= step].reset_index(drop=True)
    cut_train.attrs.update(train.attrs)
    cut_val.attrs.update(val.attrs)
    return cut_train, cut_val


def sweep_settings(schedulers: list[str] | None = None, steps: list[int] | None = None,
                   guidances: list[float] | None = None, n_per_category: int | None = None,
                   quick: bool = False) -> dict | None:
    """The `sweep` argument of quality_review.review_checkpoint: its default sweep with the given lists; [] samplers: none."""
    from t2ilab.review import quality

    if schedulers is not None and len(schedulers) == 0:
        return None
    base = dict(quality.QUICK_SWEEP if quick else quality.DEFAULT_SWEEP)
    given = {"schedulers": schedulers, "steps": steps, "guidance_scales": guidances, "n_per_category": n_per_category}
    return base | {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in given.items() if v is not None}


def memorization_view(checkpoint: str | Path, review: dict, data_cache_dir: str | Path | None = None, seed: int = 0):
    """The review's closest generated / training / held-out triples as one image (None when it has none).

    Only the shown generated images are drawn again, with the review's seed, count and sampler settings, so they
    are the images the review measured (quality.sample_like_dataset is deterministic per prompt and seed).
    """
    from t2ilab.datasets.data import DataWarning, load_dataset
    from t2ilab.review import features, heldout_review, quality

    memo = review.get("memorization") or {}
    if not memo.get("closest"):
        return None
    overrides = [f"data.cache_dir={data_cache_dir}"] if data_cache_dir else None
    cfg = load_config(Path(checkpoint) / "config.yaml", overrides)
    with warnings.catch_warnings():  # skipped files: the review's first cell has said so already
        warnings.simplefilter("ignore", DataWarning)
        dataset = load_dataset(cfg.data)
    shown = [pair["generated"] for pair in memo["closest"]]
    sample = heldout_review.sample_heldout if review.get("heldout") else quality.sample_like_dataset  # as the review drew them
    generated, _ = sample(checkpoint, dataset, memo["n_generated"], seed, only=shown, **review["sampling"])
    memo = memo | {"closest": [pair | {"generated": k} for k, pair in enumerate(memo["closest"])]}
    return features.memorization_figure(generated, _channels_last(dataset.images[dataset.train_idx]),
                                        _channels_last(dataset.images[dataset.val_idx]), memo)


def _channels_last(images) -> np.ndarray:
    """uint8 (N, 3, H, W) tensor -> (N, H, W, 3) array, the layout features.memorization takes."""
    return images.permute(0, 2, 3, 1).numpy()


def score_summary(review: dict) -> str:
    """The overall judge score with its 95% CI and ceiling, and whether it beats the previous milestone."""
    if review.get("overall") is None:
        return "no judge scores: the exact judge reads the shapes data set only (folder data gets KID/FD below)"
    low, high = review["overall_ci"]
    text = f"overall {review['overall']:.3f} (95% CI {low:.3f}–{high:.3f}); judge on real images {review['ceiling']:.3f}"
    versus = review.get("vs_previous")
    if versus:
        text += (f"\nbetter than the previous milestone? {versus['verdict']} (difference {versus['difference']:+.3f}; "
                 f"its score {versus.get('previous_source', 'scored now')})")
    return text


def best_summary(review: dict) -> str:
    """The best sampler setting and the fastest one as good as it (within its 95% CI)."""
    best = review.get("best_settings")
    if not best:
        return "no sampler sweep in this review"
    return (f"best: {_describe_cell(best['best'])}\nfastest as good: {_describe_cell(best['fastest_within_ci'])} "
            f"({best['speedup']:.1f}x faster)")


def _describe_cell(cell: dict) -> str:
    return (f"{cell['scheduler']}, {cell['steps']} steps, guidance {cell['guidance']:g}: accuracy {cell['accuracy']:.3f} "
            f"[{cell['ci_low']:.3f}, {cell['ci_high']:.3f}], {1000 * cell['seconds_per_image']:.1f} ms/image")
