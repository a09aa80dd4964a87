"""Standard metrics on tiny random stand-ins for real weights (no downloads): CLIP score equals the score computed
by hand from CLIPModel's embeddings; FID/KID through torchmetrics are ~0 for real vs real and large for real vs
noise; missing or unset weights give a sentence naming the key and the path, never an exception.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metric_helpers import make_tiny_clip, make_tiny_torchscript
from t2ilab.config import CATEGORIES, ConfigError, load_config
from t2ilab.datasets import shapes
from t2ilab.review import standard_metrics

MIX = {c: 1.0 for c in CATEGORIES}
CAPTIONS = ["a red circle", "two blue squares", "a green triangle on the left"]


@pytest.fixture(scope="module")
def renders():
    """Two disjoint samples of real renders and uniform noise of the same shape."""
    a, _, _ = shapes.render_shapes_dataset(120, 16, 1, MIX)
    b, _, _ = shapes.render_shapes_dataset(120, 16, 2, MIX)
    noise = np.random.default_rng(0).integers(0, 256, size=a.shape, dtype=np.uint8)
    return a, b, noise


def test_clip_score_is_100_times_the_clamped_cosine_of_clipmodels_embeddings(tmp_path):
    folder = make_tiny_clip(tmp_path / "clip", CAPTIONS)
    model, processor = standard_metrics.load_clip(str(folder))
    images = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    captions = CAPTIONS * 2
    scores = standard_metrics.clip_scores(model, processor, images, captions, batch_size=4)
    with torch.no_grad():
        out = model(**processor(text=captions, images=list(images), return_tensors="pt", padding=True))
    expected = 100 * torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).clamp_min(0)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-4, atol=1e-4)
    summary = standard_metrics.mean_interval(scores)
    assert summary["n"] == 6 and 0 <= summary["ci_low"] <= summary["mean"] <= summary["ci_high"] <= 100


@pytest.mark.parametrize("kind", ["inception", "extractor"])
def test_fid_and_kid_are_near_zero_for_real_vs_real_and_large_for_noise(tmp_path, renders, kind):
    key = "inception_weights" if kind == "inception" else "feature_extractor"
    extractor = standard_metrics.load_extractor(str(make_tiny_torchscript(tmp_path / f"{kind}.pt", kind)), key)
    assert extractor.return_features == (kind == "inception")
    a, b, noise = (standard_metrics.extract(extractor, x) for x in renders)
    same = standard_metrics.fid_kid(a, b, bootstrap=5)
    different = standard_metrics.fid_kid(a, noise, bootstrap=5)
    assert abs(same["kid"]["mean"]) < 3 * same["kid"]["std"] + 1e-3 * different["kid"]["mean"]
    assert different["kid"]["mean"] > 20 * max(abs(same["kid"]["mean"]), same["kid"]["std"])
    assert different["fid"]["value"] > 20 * same["fid"]["value"]
    fid = same["fid"]
    assert fid["ci_low"] <= fid["ci_high"] and fid["bootstrap"] == 5
    assert (same["n_real"], same["n_generated"], same["kid"]["subset_size"]) == (120, 120, 120)


def test_fid_equals_the_closed_form_on_the_same_features(renders, tmp_path):
    from t2ilab.review.features import frechet_distance

    extractor = standard_metrics.load_extractor(str(make_tiny_torchscript(tmp_path / "e.pt", "extractor")), "feature_extractor")
    a, _, noise = (standard_metrics.extract(extractor, x) for x in renders)
    ours = frechet_distance(a.numpy(), noise.numpy())
    assert standard_metrics.fid_kid(a, noise, bootstrap=0)["fid"]["value"] == pytest.approx(ours, rel=1e-3)


def test_missing_or_unset_weights_give_a_sentence_naming_key_and_path(tmp_path, renders):
    a, b, _ = renders
    unset = standard_metrics.standard_metrics({}, a[:30], ["a red circle"] * 30, b[:30], ["a red circle"] * 30)
    assert unset["clip_score"]["status"] == "not configured" and "reports.clip_model" in unset["clip_score"]["message"]
    assert "reports.inception_weights" in unset["inception_weights"]["message"]
    missing = {"clip_model": str(tmp_path / "no-clip"), "inception_weights": str(tmp_path / "no-inception.pt"),
               "feature_extractor": str(tmp_path / "not-torchscript.pt")}
    (tmp_path / "not-torchscript.pt").write_text("hello")
    result = standard_metrics.standard_metrics(missing | {"min_images": 20}, a[:30], ["a red circle"] * 30, b[:30],
                                               ["a red circle"] * 30)
    clip, inception, extractor = (result[k] for k in ("clip_score", "inception_weights", "feature_extractor"))
    assert clip["status"] == "unavailable" and f"reports.clip_model={missing['clip_model']!r}" in clip["message"]
    assert "never downloads" in clip["message"]
    assert inception["status"] == "unavailable" and "does not exist" in inception["message"]
    assert "put a TorchScript Inception file" in inception["message"] and str(tmp_path / "no-inception.pt") in inception["message"]
    assert extractor["status"] == "unavailable" and "is not a TorchScript file" in extractor["message"]
    few = standard_metrics.standard_metrics(missing | {"min_images": 50}, a[:30], ["x"] * 30, b[:5], ["x"] * 5)
    assert few["inception_weights"]["message"] == "too few held-out images for FID and KID (have 5, need >= 50)"


def test_metric_settings_are_validated_config_fields():
    cfg = load_config(None, ["reports.clip_model=/models/clip", "reports.min_distance_images=5"])
    assert cfg.reports.clip_model == "/models/clip" and cfg.reports.inception_weights is None
    with pytest.raises(ConfigError, match=r"reports\.min_distance_images = 1 is not allowed"):
        load_config(None, ["reports.min_distance_images=1"])
    with pytest.raises(ConfigError, match=r"reports\.inception_weights = 3 is not allowed"):
        load_config(None, ["reports.inception_weights=3"])
