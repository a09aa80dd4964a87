"""The new user's case end to end: ~40 captioned photos (one corrupt, one without caption), the tiny config on
data.source=folder, 2 epochs, then `t2ilab report`'s runner: the review shows held-out captions next to their real
images, says why KID has no number, and says how to turn CLIP / FID on; with tiny local weights it shows numbers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from folder_helpers import make_photo_folder
from metric_helpers import make_tiny_clip, make_tiny_torchscript
from t2ilab.config import load_config
from t2ilab.datasets.data import load_dataset
from t2ilab.reporting.reports import run_reports
from t2ilab.training.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPES_PROMPT = "a yellow square on the left"  # in configs/review_prompts.yaml: must not reach a folder review
QUICK = {"quick": True, "n_per_category": 2, "sweep_schedulers": []}


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """(run dir, data config): the tiny config trained 2 epochs on the photo folder."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("folder_run")
    photos = make_photo_folder(root / "photos")
    cfg = load_config(REPO_ROOT / "configs" / "tiny.yaml",
                      [f"output_dir={root / 'run'}", f"data.cache_dir={root / 'cache'}", "data.source=folder",
                       f"data.path={photos}", "training.num_epochs=2", "data.val_fraction=0.2"])
    with pytest.warns(UserWarning, match=r"skipped 1 without caption \(uncaptioned\.png\), 1 unreadable \(corrupt\.png\)"):
        train(cfg, progress="none")
    return root / "run", cfg.data


def _review(reports_dir: Path) -> tuple[dict, str]:
    folder = reports_dir / "run" / "epoch-0002"
    record = json.loads((folder / "quality_review.metrics.json").read_text())
    assert record["status"] == "ok", record["error"]
    return record["metrics"], (folder / "quality_review.html").read_text()


def test_folder_review_shows_heldout_captions_and_says_what_is_missing(folder_run, tmp_path):
    run, data = folder_run
    dataset = load_dataset(data)
    results = run_reports(run, "all", ["quality_review"], tmp_path, params={"quality_review": QUICK}, log=lambda _: None)
    assert [(r.epoch, r.status) for r in results] == [(2, "ok")]
    review, page = _review(tmp_path)
    held = [dataset.captions[i] for i in dataset.val_idx]
    assert [row["prompt"] for row in review["heldout"]["rows"]] == held[:8]
    assert all(row["source"] == "held-out caption" for row in review["heldout"]["rows"])
    for caption in held[:8]:
        assert caption in page, "every grid prompt is listed in the review"
    assert SHAPES_PROMPT not in page and "no judge scores" in page.lower()
    n = len(dataset.val_idx)
    assert n < 20 and f"too few held-out images for KID (have {n}, need &gt;= 20)" in page
    assert "CLIP score not configured: set reports.clip_model" in page
    assert "FID/KID (Inception) not configured: set reports.inception_weights" in page
    assert "KID lies between 0 and 16" in page, "the in-domain scale is stated in the report"
    assert review["distance"]["reference"] == "held-out" and review["kid"] is None

    index = (tmp_path / "run" / "index.md").read_text()
    assert "no quality review yet" not in index and "in-domain KID" in index
    assert f"too few held-out images for KID (have {n}, need &gt;= 20)" in index
    assert "No skill scores: the exact judge reads the shapes data set only" in index


def test_folder_review_with_local_clip_and_inception_shows_numbers(folder_run, tmp_path):
    run, data = folder_run
    dataset = load_dataset(data)
    clip = make_tiny_clip(tmp_path / "clip", dataset.captions)
    inception = make_tiny_torchscript(tmp_path / "inception.pt", "inception")
    params = QUICK | {"clip_model": str(clip), "inception_weights": str(inception), "min_distance_images": 4}
    results = run_reports(run, "all", ["quality_review"], tmp_path / "reports", params={"quality_review": params},
                          log=lambda _: None)
    assert [(r.epoch, r.status) for r in results] == [(2, "ok")]
    review, page = _review(tmp_path / "reports")
    standard = review["standard"]
    clip_score = standard["clip_score"]
    assert clip_score["status"] == "ok" and clip_score["generated"]["n"] == 64
    assert clip_score["real"]["n"] == len(dataset.val_idx)
    assert standard["inception_weights"]["status"] == "ok"
    assert standard["inception_weights"]["n_real"] == len(dataset.val_idx)
    assert review["kid"] is not None and 0 <= review["kid"]["mean"] + 3 * review["kid"]["std"] and review["kid"]["mean"] < 16
    assert "CLIP score, generated images" in page and "FID (Inception, 64 features)" in page
    assert re.search(r"\d+\.\d+ \[\d+\.\d+, \d+\.\d+\]", page), "a value with its interval"
    assert "not configured: set reports.feature_extractor" in page
    index = (tmp_path / "reports" / "run" / "index.md").read_text()
    assert "CLIP score [95% CI]" in index and "FID (Inception) [95% CI]" in index
    assert (tmp_path / "reports" / "run" / "metrics_vs_epoch.png").is_file()
