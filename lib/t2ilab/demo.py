"""`make demo`: the old guide's story, measured, on the embedded shapes set.

Train part way (the old run stopped at 118 of 200 epochs), report on the milestones so far, diagnose the
loss, resume with what the diagnosis recommends, report on the rest, and print where the index is.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from t2ilab.config import ConfigError, load_config
from t2ilab.datasets.data import load_dataset, preview_grid
from t2ilab.files import read_json
from t2ilab.review.diagnose import diagnose_run, format_duration
from t2ilab.training.checkpoint import CheckpointError, list_checkpoints

# The old run stopped at 118 of 200 epochs: 59 %.
STOP_FRACTION = 118 / 200
# Sized for 2 CPU cores: judge scores at reports.images_per_category, no sampler sweep (bench/sampling.py --judge and
# `t2ilab report --set quality_review.sweep_schedulers=[...]` run it).
DEMO_REPORT_PARAMS = {"quality_review": {"sweep_schedulers": [], "quick": False}}


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(config_path: str, overrides: list[str], reports: bool = True, fresh: bool = False) -> dict:
    """Run the whole story; returns the paths and numbers it printed."""
    # Long on purpose (~65 lines): the demo's story (preview, train to 118/200, resume, reports, summary) reads
    # top to bottom here as the README tells it; each step is one call into the library.
    from t2ilab.reporting.reports import run_reports
    from t2ilab.training.train import train

    started = time.perf_counter()
    cfg = load_config(config_path, overrides)
    out = Path(cfg.output_dir)
    if fresh and list_checkpoints(out):
        raise ConfigError(f"{out} already holds checkpoints; remove it or drop --fresh")
    stop_epoch = max(1, round(cfg.training.num_epochs * STOP_FRACTION))

    _say(f"1/5 data: {cfg.data.num_samples} shapes images at {cfg.data.resolution} px")
    ds = load_dataset(cfg.data)
    out.mkdir(parents=True, exist_ok=True)
    preview = out / "data_preview.png"
    preview_grid(ds, n=24, cols=8).save(preview)
    print(f"preview grid: {preview} ({'cache hit' if getattr(ds, 'from_cache', False) else 'rendered and cached'})")

    done = list_checkpoints(out)
    resumed_from = done[-1][1]["epoch"] if done else 0
    _say(f"2/5 train to epoch {stop_epoch} of {cfg.training.num_epochs} (as the old run stopped at 118 of 200)")
    if resumed_from >= stop_epoch:
        print(f"already trained to epoch {resumed_from}; skipping")
    else:
        if train(cfg, resume="latest" if done else None, stop_at_epoch=stop_epoch).stopped == "signal":
            raise KeyboardInterrupt
    if reports:
        run_reports(out, milestones="all", params=DEMO_REPORT_PARAMS)

    _say("3/5 loss diagnosis: keep training? lower the learning rate? more epochs?")
    diagnosis = diagnose_run(out, target_epochs=cfg.training.num_epochs)
    print(f"verdict: {diagnosis['verdict']} - {diagnosis['summary']}")
    print(f"recommendation: {diagnosis['recommendation']}")
    print(f"ETA: {diagnosis['eta']['text']}")
    resume_overrides = list(overrides)
    if diagnosis["verdict"] in ("plateau", "unstable"):
        # The recommendation's number: half the learning rate the run had reached (not half the configured peak,
        # which after a cosine decay can be *higher* than the current one).
        lr = (diagnosis["evidence"].get("lr") or cfg.training.learning_rate) / 2
        resume_overrides.append(f"training.learning_rate={lr:.3g}")
        print(f"applying it: resume with training.learning_rate={lr:.3g}")
    else:
        print(f"applying it: resume to epoch {cfg.training.num_epochs} with the schedule unchanged")

    _say(f"4/5 resume to epoch {cfg.training.num_epochs}")
    resume_cfg = load_config(config_path, resume_overrides)
    latest = list_checkpoints(out)[-1][1]
    if latest["epoch"] >= resume_cfg.training.num_epochs:
        print(f"already at epoch {latest['epoch']}; skipping")
    else:
        if train(resume_cfg, resume="latest").stopped == "signal":
            raise KeyboardInterrupt

    index = None
    if reports:
        _say("5/5 reports for the remaining milestones and the index")
        results = run_reports(out, milestones="all", params=DEMO_REPORT_PARAMS)
        index = Path(results[0].index_html) if results and getattr(results[0], "index_html", None) else None
        final = final_scores(results)
        if final:
            print(final)
    seconds = time.perf_counter() - started
    _say(f"done in {format_duration(seconds)}")
    if index is not None:
        print(f"open the quality report index: {index}")
    return {"output_dir": str(out), "seconds": seconds, "diagnosis": diagnosis, "index": str(index) if index else None}


def final_scores(results) -> str | None:
    """The last milestone's skills and strict overall with their 95 % intervals, read from its review's sidecar."""
    reviews = sorted((r for r in results if r.notebook == "quality_review" and r.status in ("ok", "skipped")),
                     key=lambda r: r.epoch)
    record = read_json(reviews[-1].sidecar_path) if reviews else None
    review = (record or {}).get("metrics") or {}
    if review.get("overall") is None:
        return None
    low, high = review["overall_ci"]
    skills = "; ".join(f"{s['skill']} {s['accuracy']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]" for s in review.get("skills") or [])
    return (f"final milestone (epoch {review.get('epoch')}, N = {review.get('n_per_category')} per category): "
            f"strict overall {review['overall']:.3f} [{low:.3f}, {high:.3f}]\nskills: {skills}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="t2ilab demo", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-reports", action="store_true", help="skip the papermill reports (faster)")
    args = p.parse_args(argv)
    try:
        run_demo(args.config, args.overrides, reports=not args.no_reports)
    except (ConfigError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped; `make demo` again continues from the last checkpoint", file=sys.stderr)
        return 130
    return 0
