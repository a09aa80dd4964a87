"""One checkpoint's quality review as a dict for metrics.json: judge scores and skills, the sampler sweep, the
guide's claims, distances and standard metrics, prompt checks, and the comparison with the previous milestone.

The pieces live in quality.py (judging and sampling), review_distances.py (KID/FD, CLIP, memorization) and
sweep_verdicts.py; this module only puts them together.
"""

from __future__ import annotations

import time
from pathlib import Path

from t2ilab.config import load_config
from t2ilab.datasets.data import load_dataset
from t2ilab.files import jsonable, read_json
from t2ilab.paths import REVIEW_PROMPTS
from t2ilab.review import review_distances, skill_report
from t2ilab.review.quality import (
    DEFAULT_SWEEP,
    QUICK_SWEEP,
    load_review_prompts,
    prompt_comparison,
    sampler_sweep,
    score_checkpoint,
)
from t2ilab.review.sweep_verdicts import _compare, answer_guide_claims, best_settings
from t2ilab.sampling.pipeline import load_pipeline
from t2ilab.training.checkpoint import read_manifest, resolve_checkpoint


def review_checkpoint(checkpoint, previous: str | Path | dict | None = None, n_per_category: int | None = None,
                      sweep: dict | None = DEFAULT_SWEEP, quick: bool = False, data_cache_dir: str | None = None,
                      prompts_file: str | Path | None = REVIEW_PROMPTS, distance_n: int | None = None,
                      encoder_steps: int = 300, seed: int = 0, batch_size: int = 64, device=None,
                      previous_review: str | Path | None = None, metrics: dict | None = None) -> dict:
    """Scores, sampler sweep, KID/FD, standard metrics, memorization and prompt checks of one checkpoint as a dict.

    Sampling settings come from the checkpoint's config (sampling: section), N from reports.images_per_category
    (8 when quick). sweep=None skips the sweep; quick=True also shrinks the default sweep and distance sample.
    `previous`: an earlier review dict or checkpoint, to say whether this one is better. `previous_review`: the
    previous milestone's report sidecar (.metrics.json); when it scored `previous` with the same sampler, N and
    seed its score is read instead of sampling the previous checkpoint again (a missing file is not an error).
    `metrics`: clip_model / inception_weights / feature_extractor overriding reports.* (review_distances).
    """
    start, timings = time.perf_counter(), {}
    path = resolve_checkpoint(checkpoint)
    cfg = load_config(path / "config.yaml", [f"data.cache_dir={data_cache_dir}"] if data_cache_dir else None)
    sampling = {"scheduler": cfg.sampling.scheduler, "steps": cfg.sampling.num_inference_steps, "guidance": cfg.sampling.guidance_scale}
    n = n_per_category or (min(8, cfg.reports.images_per_category) if quick else cfg.reports.images_per_category)
    sweep = QUICK_SWEEP if quick and sweep is DEFAULT_SWEEP else sweep
    pipe = load_pipeline(path, "ema", device=device)
    out: dict = {"checkpoint": str(path), "epoch": pipe.manifest.get("epoch"), "global_step": pipe.manifest.get("global_step"),
                 "weights": pipe.weights, "sampling": sampling, "n_per_category": n, "seed": seed, "quick": quick,
                 "scores": None, "skills": None, "overall": None, "overall_ci": None, "ceiling": None, "sweep": None,
                 "best_settings": None, "best_sampler_overall": None, "guide_claims": None, "prompts": None}
    judged = cfg.data.source == "shapes"  # the judge reads shapes images; folder data gets distances only
    if judged:
        tick = time.perf_counter()
        scores = score_checkpoint(pipe, n, seed=seed, batch_size=batch_size, **sampling)
        overall = scores.set_index("category").loc["overall"]
        out.update(scores=scores.to_dict(orient="records"), skills=scores.attrs["skills"],
                   overall=overall["accuracy"], ceiling=overall["ceiling"],
                   overall_ci=[overall["ci_low"], overall["ci_high"]])
        timings["scores"] = time.perf_counter() - tick
        if previous is not None:
            tick = time.perf_counter()
            reusable = _reusable_review(previous_review, previous, out) if previous_review else None
            out["vs_previous"] = _versus(out, reusable or previous, n, seed, batch_size, sampling)
            timings["previous"] = time.perf_counter() - tick
    if judged and sweep is not None:
        tick = time.perf_counter()
        frame = sampler_sweep(pipe, seed=seed, batch_size=batch_size, **sweep)
        best = best_settings(frame)
        out.update(sweep=frame.to_dict(orient="records"), best_settings=best, guide_claims=answer_guide_claims(frame),
                   best_sampler_overall=best["best"]["accuracy"])
        timings["sweep"] = time.perf_counter() - tick
    dataset = load_dataset(cfg.data)
    settings = review_distances.metric_settings(cfg, **(metrics or {}))
    measured, measured_timings = review_distances.measure(pipe, cfg, dataset, distance_n or (64 if quick else 256), settings,
                                                          seed, batch_size, encoder_steps, sampling, prompts_file)
    out.update(measured)
    timings.update(measured_timings)
    if judged and prompts_file is not None and Path(prompts_file).is_file():
        tick = time.perf_counter()
        review = load_review_prompts(prompts_file)
        comparison = prompt_comparison(pipe, review["prompt_pairs"], review["prompt_seeds"], batch_size=batch_size, **sampling)
        out["prompts"] = comparison.to_dict(orient="records")
        timings["prompts"] = time.perf_counter() - tick
    out.update(timings=timings, seconds=time.perf_counter() - start)
    return jsonable(out)


def _reusable_review(sidecar: str | Path, previous, current: dict) -> dict | None:
    """The previous milestone's review from its report sidecar, if it judged the same checkpoint the same way."""
    record = read_json(Path(sidecar)) or {}
    review = (record.get("metrics") or {}) if record.get("status") == "ok" else {}
    if review.get("overall") is None or review.get("skills") is None or any(review.get(k) != current[k] for k in ("sampling", "n_per_category", "seed", "weights")):
        return None
    if not isinstance(previous, dict) and Path(review.get("checkpoint", "")).resolve() != resolve_checkpoint(previous).resolve():
        return None
    return review | {"source": f"read from the previous milestone's report ({sidecar})"}


def _versus(current: dict, previous, n: int, seed: int, batch_size: int, sampling: dict) -> dict:
    """Current overall vs a previous review dict or checkpoint (scored now with the same settings)."""
    note = None
    if isinstance(previous, dict):
        prev = {"accuracy": previous["overall"], "ci_low": previous["overall_ci"][0], "ci_high": previous["overall_ci"][1]}
        epoch, source, prev_skills = previous.get("epoch"), previous.get("source", "an earlier review"), previous.get("skills")
        if previous.get("sampling") != sampling or previous.get("n_per_category") != n:
            note = f"previous review used {previous.get('sampling')} with N={previous.get('n_per_category')} per category"
    else:
        scores = score_checkpoint(previous, n, seed=seed, batch_size=batch_size, **sampling).set_index("category")
        prev, prev_skills = scores.loc["overall"].to_dict(), scores.attrs["skills"]
        epoch, source = read_manifest(resolve_checkpoint(previous)).get("epoch"), "scored now with the same prompts and seeds"
    now = {"accuracy": current["overall"], "ci_low": current["overall_ci"][0], "ci_high": current["overall_ci"][1]}
    return {"question": "Is this checkpoint better than the previous one?", "previous": epoch,
            "previous_overall": prev["accuracy"], **_compare(now, prev), "note": note, "previous_source": source,
            "skill_changes": skill_report.skill_changes(current.get("skills"), prev_skills)}
