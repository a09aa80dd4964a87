"""The distance part of a quality review: which generated images meet which real ones (folder data: held-out
captions against held-out images; shapes: training captions against training images), the in-domain KID/FD, the
standard metrics when their weights are here, and the memorization check.
"""

from __future__ import annotations

import time

from t2ilab.config import Config
from t2ilab.review import features, heldout_review, quality, standard_metrics

SETTING_KEYS = ("clip_model", "inception_weights", "feature_extractor")


def metric_settings(cfg: Config, **given) -> dict:
    """The standard metrics' settings: reports.* of the run config, with the notebook's non-None values on top."""
    reports = cfg.reports
    settings = {"clip_model": reports.clip_model, "inception_weights": reports.inception_weights,
                "feature_extractor": reports.feature_extractor, "feature_extractor_size": reports.feature_extractor_size,
                "min_images": reports.min_distance_images, "bootstrap": reports.bootstrap_resamples}
    return settings | {k: v for k, v in given.items() if v is not None}


def measure(pipe, cfg: Config, dataset, n: int, settings: dict, seed: int = 0, batch_size: int = 64,
            encoder_steps: int = 300, sampling: dict | None = None, prompts_file=None) -> tuple[dict, dict]:
    """(review fields, timings): heldout (folder data), kid, fd, distance, standard, memorization."""
    sampling, timings, out = sampling or {}, {}, {}
    tick = time.perf_counter()
    folder = cfg.data.source == "folder" and len(dataset.val_idx) > 0
    if folder:
        generated, index = heldout_review.sample_heldout(pipe, dataset, n, seed, batch_size=batch_size, **sampling)
        real_index, label = dataset.val_idx, "held-out"
        out["heldout"] = {"n_heldout": len(dataset.val_idx), "n_generated": len(generated), "per_caption": n / len(dataset.val_idx),
                          "rows": heldout_review.review_rows(dataset, pipe.vocabulary, cfg.reports.heldout_prompts, prompts_file)}
    else:
        generated, index = quality.sample_like_dataset(pipe, dataset, n, seed, batch_size=batch_size, **sampling)
        real_index, label = features.train_sample(dataset, len(generated), seed), "training"
    distance = features.distribution_distance(generated, dataset, cache_dir=cfg.data.cache_dir, encoder_steps=encoder_steps,
                                              seed=seed, reference="heldout" if folder else "train",
                                              min_images=settings["min_images"])
    out.update(kid=distance["kid"], fd=distance["fd"], distance=distance)
    timings["distance"] = time.perf_counter() - tick
    tick = time.perf_counter()
    as_hwc = lambda idx: dataset.images[idx].permute(0, 2, 3, 1).numpy()  # noqa: E731
    out["standard"] = standard_metrics.standard_metrics(settings, generated, [dataset.captions[i] for i in index],
                                                        as_hwc(real_index), [dataset.captions[i] for i in real_index],
                                                        label, seed)
    timings["standard"] = time.perf_counter() - tick
    tick = time.perf_counter()
    if len(dataset.val_idx) >= 2:
        memo = features.memorization(generated, as_hwc(dataset.train_idx), as_hwc(dataset.val_idx))
        out["memorization"] = {k: v for k, v in memo.items() if k != "ratios"}
    else:
        out["memorization"] = {"skipped": f"needs >= 2 held-out images (data.val_fraction={cfg.data.val_fraction})"}
    timings["memorization"] = time.perf_counter() - tick
    return out, timings
