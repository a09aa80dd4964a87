"""Quality measurement: intervals shrink with N, the sweep answers the guide's claims, KID/FD and memorization
separate what they should, grids and reviews have the promised shape."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import TINY_CONFIG, make_tiny_checkpoint
from PIL import Image
from t2ilab.config import CATEGORIES, ConfigError, load_config
from t2ilab.datasets import shapes
from t2ilab.datasets.data import load_dataset
from t2ilab.review import features, judge, quality, quality_review
from t2ilab.sampling.pipeline import load_pipeline
from t2ilab.training.train import train

MIX = {c: 1.0 for c in CATEGORIES}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("random"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_cache):
    """The tiny config trained for real (about 5 s): checkpoints at epochs 2 and 4."""
    out = tmp_path_factory.mktemp("trained")
    train(load_config(TINY_CONFIG, [f"output_dir={out}", f"data.cache_dir={data_cache}"]), progress="none")
    return out


def test_review_prompts_cover_every_category_and_pairs_have_a_judgeable_core():
    review = quality.load_review_prompts()
    categories = {shapes.parse_caption(p)["category"] for p in review["prompts"]}
    assert categories == set(CATEGORIES)
    assert review["seeds"] and review["prompt_pairs"]
    assert quality.judged_core("a beautiful red circle, high quality, photorealistic")[0] == "a red circle"
    assert quality.judged_core("a beautiful orange cat") == (None, None)


def test_bad_review_prompts_file_names_file_and_field(tmp_path):
    bad = tmp_path / "prompts.yaml"
    bad.write_text("prompts: [a red circle]\nseeds: [zero]\n")
    with pytest.raises(ConfigError, match=r"prompts\.yaml: seeds"):
        quality.load_review_prompts(bad)


def test_judging_prompts_extend_when_n_grows():
    small_specs, small_seeds = quality.judging_prompts(2)
    large_specs, large_seeds = quality.judging_prompts(5)
    for k, category in enumerate(CATEGORIES):
        assert large_specs[5 * k : 5 * k + 2] == small_specs[2 * k : 2 * k + 2]
        assert large_seeds[5 * k : 5 * k + 2] == small_seeds[2 * k : 2 * k + 2]
        assert all(s["category"] == category for s in large_specs[5 * k : 5 * k + 5])


def test_scores_have_every_category_overall_and_ceiling_and_intervals_shrink_with_n(tiny_checkpoint):
    pipe = load_pipeline(tiny_checkpoint)
    small = quality.score_checkpoint(pipe, n_per_category=2, steps=1, ceiling_n=10)
    large = quality.score_checkpoint(pipe, n_per_category=8, steps=1, ceiling_n=10)
    assert list(large["category"]) == [*CATEGORIES, "overall"]
    assert (large.set_index("category")["n"].drop("overall") == 8).all()
    assert large["ceiling"].notna().all() and "ceiling_n" in large
    width = lambda df: (df["ci_high"] - df["ci_low"]).to_numpy()  # noqa: E731
    assert (width(large) < width(small)).all()
    skills = pd.DataFrame(large.attrs["skills"]).set_index("skill")
    assert list(skills.index) == list(judge.SKILLS) and (skills["n"] > 0).all()
    assert (skills["ci_low"] <= skills["accuracy"]).all() and (skills["accuracy"] <= skills["ci_high"]).all()


def test_sweep_scores_and_times_every_cell(tiny_checkpoint):
    sweep = quality.sampler_sweep(tiny_checkpoint, ("ddim", "dpmsolver++"), (1, 2), (1.0, 3.0), n_per_category=1)
    assert len(sweep) == 8
    assert set(map(tuple, sweep[["scheduler", "steps", "guidance"]].to_numpy().tolist())) == {
        (s, n, g) for s in ("ddim", "dpmsolver++") for n in (1, 2) for g in (1.0, 3.0)}
    assert sweep["accuracy"].between(0, 1).all() and (sweep["seconds_per_image"] > 0).all()
    assert set(CATEGORIES) <= set(sweep.columns) and (sweep["n"] == len(CATEGORIES)).all()
    guided = np.where(sweep["guidance"] > 1, 2, 1)  # classifier-free guidance doubles the UNet passes
    assert (sweep["unet_evals_per_image"] == sweep["steps"] * guided).all()


def _cell(scheduler, steps, guidance, accuracy, half_width, seconds=0.1, n=96):
    return {"scheduler": scheduler, "steps": steps, "guidance": guidance, "n": n, "accuracy": accuracy,
            "ci_low": accuracy - half_width, "ci_high": accuracy + half_width, "seconds_per_image": seconds}


def test_best_settings_picks_the_max_and_the_fastest_cell_within_its_interval():
    sweep = pd.DataFrame([_cell("ddim", 100, 4.0, 0.80, 0.08, seconds=1.0),
                          _cell("dpmsolver++", 20, 4.0, 0.75, 0.08, seconds=0.2),
                          _cell("euler", 10, 4.0, 0.50, 0.08, seconds=0.1)])
    best = quality.best_settings(sweep)
    assert (best["best"]["scheduler"], best["best"]["accuracy"]) == ("ddim", 0.80)
    assert best["fastest_within_ci"]["scheduler"] == "dpmsolver++" and best["cells_within_ci"] == 2
    assert best["speedup"] == pytest.approx(5.0)
    sweep["unet_evals_per_image"] = [10, 40, 20]  # by forward passes instead of wall clock
    assert quality.best_settings(sweep, cost="unet_evals_per_image")["fastest_within_ci"]["scheduler"] == "ddim"


@pytest.mark.parametrize(("acc_100", "acc_50", "half_width", "expected"), [
    (0.90, 0.50, 0.05, "yes"),
    (0.52, 0.50, 0.20, "not distinguishable at this N"),
    (0.40, 0.80, 0.05, "no"),
])
def test_guide_claims_verdicts_follow_the_numbers(acc_100, acc_50, half_width, expected):
    rows = []
    for scheduler in ("ddim", "ddpm"):
        for guidance in (2.0, 4.0):
            bonus = 0.0 if guidance == 4.0 else -0.1  # guidance 4 is the best: the comparison must use it
            rows.append(_cell(scheduler, 100, guidance, acc_100 + bonus, half_width, seconds=2.0))
            rows.append(_cell(scheduler, 50, guidance, acc_50 + bonus, half_width, seconds=1.0))
    claims = quality.answer_guide_claims(pd.DataFrame(rows))
    steps = claims["steps"]
    assert steps["verdict"] == expected
    assert [r["verdict"] for r in steps["per_scheduler"]] == [expected, expected]
    assert all(r["guidance"] == 4.0 for r in steps["per_scheduler"])
    assert steps["difference"] == pytest.approx(acc_100 - acc_50)
    assert steps["per_scheduler"][0]["time_ratio"] == pytest.approx(2.0)
    # ddim and ddpm have identical numbers here: never a "yes" or "no"
    assert claims["samplers"]["verdict"] == "not distinguishable at this N" and len(claims["samplers"]["per_cell"]) == 4


@pytest.fixture(scope="module")
def real_features():
    """Features of two disjoint sets of real renders and of uniform noise, from an encoder trained on a third."""
    train_images, _, _ = shapes.render_shapes_dataset(300, 16, 0, MIX)
    encoder = features.train_feature_encoder(train_images, steps=50)
    a, _, _ = shapes.render_shapes_dataset(150, 16, 1, MIX)
    b, _, _ = shapes.render_shapes_dataset(150, 16, 2, MIX)
    noise = np.random.default_rng(0).integers(0, 256, size=a.shape, dtype=np.uint8)
    return [features.encode(encoder, x) for x in (a, b, noise)]


def test_kid_is_near_zero_for_real_vs_real_and_large_for_noise(real_features):
    a, b, noise = real_features
    same, different = features.kid(a, b, subsets=50, subset_size=100), features.kid(a, noise, subsets=50, subset_size=100)
    assert abs(same["mean"]) < 2 * same["std"] + 0.05
    assert different["mean"] > 10 * max(abs(same["mean"]), same["std"])
    assert (same["n_a"], same["n_b"], same["subset_size"]) == (150, 150, 100)


def test_in_domain_distances_are_on_the_stated_bounded_scale(real_features):
    a, b, noise = real_features
    for x in (a, b, noise):
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), np.sqrt(features.FEATURE_DIM))
    far = features.kid(a, noise, subsets=20, subset_size=100)["mean"]
    assert 0.1 < far <= 16, "bounded: the kernel of length-sqrt(d) features lies in [0, 8]"
    assert features.frechet_distance(a, noise) <= 4 * features.FEATURE_DIM


def test_frechet_distance_separates_noise_and_needs_more_samples_than_dimensions(real_features):
    a, b, noise = real_features
    assert features.frechet_distance(a, noise) > 10 * features.frechet_distance(a, b)
    assert features.frechet_distance(a[: features.FEATURE_DIM], b) is None
    assert "more samples than feature dimensions" in features.frechet_unavailable(10, 200, features.FEATURE_DIM)


def test_memorization_flags_planted_copies_and_not_fresh_renders():
    train_images, _, _ = shapes.render_shapes_dataset(400, 16, 0, MIX)
    heldout, _, _ = shapes.render_shapes_dataset(100, 16, 1, MIX)
    fresh, _, _ = shapes.render_shapes_dataset(100, 16, 2, MIX)
    noisy = np.clip(train_images[10:20] + np.random.default_rng(0).normal(0, 4, (10, 16, 16, 3)), 0, 255).astype(np.uint8)
    generated = np.concatenate([train_images[:10], noisy, fresh])
    result = features.memorization(generated, train_images, heldout)
    assert (result["ratios"][:10] == 0).all() and (result["ratios"][:20] < result["threshold"]).all()
    assert (result["ratios"][20:] < result["threshold"]).mean() <= 0.03
    assert result["n_flagged"] >= 20 and {c["generated"] for c in result["closest"]} <= set(range(20))
    assert result["closest"][0]["train_index"] == result["closest"][0]["generated"]  # an exact copy found its source
    assert result["verdict"] == "more near-copies than unseen real images"
    clean = features.memorization(fresh, train_images, heldout)
    assert clean["verdict"] == "no more near-copies than unseen real images"
    figure = features.memorization_figure(generated, train_images, heldout, result)
    assert figure.height > len(result["closest"]) * 16


def test_review_grid_shows_ema_and_raw_blocks_of_the_same_seeds(tiny_checkpoint):
    prompts, seeds = ["a red circle", "two squares", "a circle and a triangle"], [0, 5]
    grid = quality.review_grid(tiny_checkpoint, prompts, seeds, steps=2)
    layout = quality.grid_layout(len(prompts), len(seeds), 2, 16)
    assert grid.size == layout["size"]
    cell, header = layout["cell"], layout["header"]
    pixels = np.asarray(grid)
    for block, weights in enumerate(("ema", "raw")):
        image = load_pipeline(tiny_checkpoint, weights=weights)(prompts[1], seed=seeds[1], num_inference_steps=2,
                                                                 guidance_scale=3.0, output_type="np").images[0]
        x = quality.LABEL_WIDTH + block * (len(seeds) * (cell + quality.GUTTER) + quality.BLOCK_GAP) + cell + quality.GUTTER
        y = header + cell + quality.GUTTER
        expected = np.asarray(Image.fromarray(image).resize((cell, cell), Image.Resampling.NEAREST))
        assert np.array_equal(pixels[y : y + cell, x : x + cell], expected), weights
    both = quality.side_by_side(grid, grid)
    assert both.width == 2 * grid.width + quality.BLOCK_GAP and quality.side_by_side(grid, None).width == grid.width


def test_prompt_comparison_judges_cores_and_lists_unknown_words(tiny_checkpoint):
    pairs = [{"short": "a red circle", "detailed": "a beautiful red circle, photorealistic"},
             {"short": "a cat", "detailed": "a beautiful orange cat"}]
    table = quality.prompt_comparison(tiny_checkpoint, pairs, seeds=[0, 1], steps=1)
    assert list(table["role"]) == ["short", "detailed"] * 2 and (table["n"] == 2).all()
    decorated = table.iloc[1]
    assert {"beautiful", "photorealistic"} <= set(decorated["unknown_words"])
    assert decorated["judged_as"] == "a red circle" and not decorated["in_grammar"]
    assert 0 <= decorated["accuracy"] <= 1 and 0 <= decorated["short_claim_accuracy"] <= 1
    cat = table.iloc[3]
    assert pd.isna(cat["judged_as"]) and pd.isna(cat["accuracy"]) and "cat" in cat["unknown_words"]


def test_feature_encoder_is_cached_on_disk_by_data_fingerprint(trained_run, data_cache):
    cfg = load_config(trained_run / "checkpoint-epoch-0004" / "config.yaml", [f"data.cache_dir={data_cache}"])
    dataset = load_dataset(cfg.data)
    first = features.load_or_train_encoder(dataset, data_cache, steps=20)
    path = features.encoder_path(data_cache, dataset.fingerprint, steps=20)
    assert path.is_file()
    features._ENCODERS.clear()  # a new process: must read the file, not retrain
    images = dataset.images[:8].permute(0, 2, 3, 1).numpy()
    again = features.load_or_train_encoder(dataset, data_cache, steps=20)
    assert again is not first and np.array_equal(features.encode(first, images), features.encode(again, images))


def test_review_checkpoint_returns_a_json_serialisable_review(trained_run, data_cache, tmp_path):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("prompts: [a red circle]\nprompt_pairs: [{short: a circle, detailed: a beautiful red circle}]\n"
                       "prompt_seeds: [0, 1]\n")
    sweep = {"schedulers": ("ddim", "dpmsolver++"), "steps": (1, 2), "guidance_scales": (3.0,), "n_per_category": 1}
    review = quality_review.review_checkpoint(trained_run / "checkpoint-epoch-0004", previous=trained_run / "checkpoint-epoch-0002",
                                       n_per_category=2, sweep=sweep, quick=True, data_cache_dir=str(data_cache),
                                       prompts_file=prompts, distance_n=16, encoder_steps=20)
    json.dumps(review, allow_nan=False)
    for key in ("epoch", "global_step", "scores", "overall", "ceiling", "sweep", "best_settings", "guide_claims",
                "kid", "fd", "memorization", "prompts", "n_per_category", "seconds", "vs_previous"):
        assert key in review, key
    assert review["epoch"] == 4 and review["n_per_category"] == 2 and len(review["sweep"]) == 4
    assert len(review["scores"]) == len(CATEGORIES) + 1 and 0 <= review["overall"] <= 1
    assert [row["skill"] for row in review["skills"]] == list(judge.SKILLS)
    assert all(row["n"] > 0 and row["ci_low"] <= row["accuracy"] <= row["ci_high"] for row in review["skills"])
    distance = review["distance"]  # 16 generated images: below reports.min_distance_images, a sentence, no number
    assert review["kid"] is None and review["fd"] is None and distance["n_generated"] == 16
    assert distance["kid_note"] == "too few training images for KID (have 16, need >= 20)"
    assert distance["reference"] == "training" and "KID lies between 0 and 16" in distance["scale"]
    assert review["standard"]["clip_score"]["status"] == "not configured"
    assert review["memorization"]["n_generated"] == 16 and "ratios" not in review["memorization"]
    assert review["guide_claims"]["steps"]["verdict"] == "not measured"  # no 50/100-step cells in this sweep
    assert [p["role"] for p in review["prompts"]] == ["short", "detailed"] and "beautiful" in review["prompts"][1]["unknown_words"]
    assert review["vs_previous"]["verdict"] in ("yes", "no", "not distinguishable at this N")


def test_previous_review_is_reused_only_when_it_judged_the_same_checkpoint_the_same_way(trained_run, tmp_path):
    previous = trained_run / "checkpoint-epoch-0002"
    current = {"sampling": {"scheduler": "ddim", "steps": 2, "guidance": 3.0}, "n_per_category": 2, "seed": 0, "weights": "ema"}
    review = current | {"checkpoint": str(previous), "epoch": 2, "overall": 0.25, "overall_ci": [0.1, 0.5],
                        "skills": [{"skill": "color", "n": 8, "accuracy": 0.5, "ci_low": 0.22, "ci_high": 0.78}]}
    sidecar = tmp_path / "quality_review.metrics.json"

    def reuse(record: dict):
        sidecar.write_text(json.dumps(record))
        return quality_review._reusable_review(sidecar, previous, current)

    assert reuse({"status": "ok", "metrics": review})["overall"] == 0.25
    assert reuse({"status": "failed", "metrics": review}) is None
    assert reuse({"status": "ok", "metrics": review | {"n_per_category": 4}}) is None
    assert reuse({"status": "ok", "metrics": review | {"seed": 1}}) is None
    assert reuse({"status": "ok", "metrics": review | {"skills": None}}) is None, "a review from before skills"
    assert reuse({"status": "ok", "metrics": review | {"sampling": current["sampling"] | {"steps": 3}}}) is None
    assert reuse({"status": "ok", "metrics": review | {"checkpoint": str(trained_run / "checkpoint-epoch-0004")}}) is None
    assert quality_review._reusable_review(tmp_path / "missing.json", previous, current) is None


def test_memorization_figure_redraws_only_the_shown_images_and_they_are_the_reviewed_ones(trained_run, data_cache):
    from t2ilab.datasets.data import load_dataset
    from t2ilab.reporting import notebook_params

    checkpoint = trained_run / "checkpoint-epoch-0004"
    dataset = load_dataset(load_config(checkpoint / "config.yaml", [f"data.cache_dir={data_cache}"]).data)
    sampling = {"scheduler": "ddim", "steps": 2, "guidance": 3.0}
    every, index = quality.sample_like_dataset(checkpoint, dataset, 12, seed=0, **sampling)
    shown = [7, 2, 11]
    some, some_index = quality.sample_like_dataset(checkpoint, dataset, 12, seed=0, only=shown, **sampling)
    assert list(some_index) == list(index[shown])
    assert np.abs(some.astype(int) - every[shown].astype(int)).max() <= 1, "same prompt and seed: the same image"

    as_hwc = lambda idx: dataset.images[idx].permute(0, 2, 3, 1).numpy()  # noqa: E731
    memo = features.memorization(every, as_hwc(dataset.train_idx), as_hwc(dataset.val_idx), k=3)
    review = {"sampling": sampling, "memorization": {k: v for k, v in memo.items() if k != "ratios"}}
    figure = notebook_params.memorization_view(checkpoint, review, data_cache)
    expected = features.memorization_figure(every, as_hwc(dataset.train_idx), as_hwc(dataset.val_idx), memo)
    assert figure.size == expected.size
    assert np.abs(np.asarray(figure, int) - np.asarray(expected, int)).max() <= 1
