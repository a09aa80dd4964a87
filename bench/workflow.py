"""Workflow times: (1) render + cache 5000 shapes at 32 px into a fresh cache, and the cached reload; (2) resume
start-up: from launching `python -m t2ilab train --resume latest --max-steps <one more>` on a configs/demo.yaml run
with 5000 samples to the first new training step (target < 5 s); (3) report generation time per milestone
(t2ilab.reporting.reports.run_reports at `make demo`'s sizes) against the training time between the demo's milestones
(target <= 10 %).

    .venv/bin/python bench/workflow.py            # 3 renders, 3 resumes, demo-size reports on a 2-epoch demo run
    .venv/bin/python bench/workflow.py --quick    # 1 render of 1000, 1 resume, no reports

(2) runs the real CLI in a fresh interpreter; a small driver around it records when t2ilab.training.train is imported and
when Trainer.train_step is first entered, so no log parsing (train.log has 1 s resolution) is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, epoch_seconds, format_table, load_average, median, wait_for_quiet
from t2ilab.config import DataConfig, load_config
from t2ilab.datasets.data import load_dataset

TARGET_STARTUP_S = 5.0
TARGET_REPORT_SHARE = 0.10  # one milestone's report set vs the training between milestones
# Runs `python -m t2ilab <argv>` and prints seconds since the parent launched it at three marks.
DRIVER = """
import json, runpy, sys, time
launched = float(sys.argv[1]); marks = {"interpreter up": time.time()}
import t2ilab.training.train
marks["t2ilab.training.train imported"] = time.time()
step = t2ilab.training.train.Trainer.train_step
def timed_step(self, *a, **k):
    marks.setdefault("first step entered", time.time())
    out = step(self, *a, **k)
    marks.setdefault("first step done", time.time())
    return out
t2ilab.training.train.Trainer.train_step = timed_step
sys.argv = ["t2ilab", *sys.argv[2:]]
try:
    runpy.run_module("t2ilab", run_name="__main__")
except SystemExit as exc:
    marks["exit code"] = exc.code
marks["exited"] = time.time()
print("MARKS " + json.dumps({k: (v - launched if k != "exit code" else v) for k, v in marks.items()}))
"""


def time_data(samples: int, resolution: int, rounds: int, root: Path) -> tuple[list[float], list[float], Path]:
    """Seconds to render + cache into a fresh cache dir, and to reload from it; per round."""
    render, reload = [], []
    cache = root
    for r in range(rounds):
        cache = root / f"cache-{r}"
        cfg = DataConfig(num_samples=samples, resolution=resolution, cache_dir=str(cache))
        t0 = time.perf_counter()
        ds = load_dataset(cfg)
        render.append(time.perf_counter() - t0)
        assert not ds.from_cache
        t0 = time.perf_counter()
        ds = load_dataset(cfg)
        reload.append(time.perf_counter() - t0)
        assert ds.from_cache
    return render, reload, cache


def t2ilab_train(args: list[str], log_to: Path) -> dict:
    """Run the driver around `python -m t2ilab train ...`; its marks (seconds after launch)."""
    env = {**os.environ, "T2ILAB_HEADLESS": "1"}
    launched = time.time()
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(launched), "train", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    log_to.write_text(proc.stdout + proc.stderr)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("MARKS ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"t2ilab train {' '.join(args)} failed (exit {proc.returncode}); see {log_to}:\n{proc.stderr[-2000:]}")
    marks = json.loads(lines[-1][6:])
    if marks.get("exit code"):
        raise RuntimeError(f"t2ilab train exited with {marks['exit code']}; see {log_to}:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return marks


def time_reports(root: Path, size: str) -> tuple[list[list], dict] | str:
    """Seconds per report notebook for the second milestone of a 2-epoch demo run (so "better than the previous
    milestone?" is part of it, as at every demo milestone after the first), and the training time between the
    demo's milestones for comparison; or why it was not measured."""
    try:
        from t2ilab.demo import DEMO_REPORT_PARAMS
        from t2ilab.reporting.reports import run_reports
    except ImportError as exc:
        return f"not measured: reports not built ({exc})"
    run = root / "reports-run"
    t2ilab_train(["--config", "configs/demo.yaml", "--progress", "none", "--set", f"output_dir={run}",
                  "--set", "training.num_epochs=2", "--set", "reports.milestones=[1,2]",
                  "--set", "reports.on_milestone=false"], root / "reports-run.log")
    params = {"quick": True} if size == "quick" else DEMO_REPORT_PARAMS if size == "demo" else {}
    run_reports(run, milestones=[1], reports_dir=root / "reports", force=True, params=params, log=lambda s: None)
    t0 = time.perf_counter()
    results = run_reports(run, milestones=[2], reports_dir=root / "reports", force=True, params=params, log=lambda s: None)
    total = time.perf_counter() - t0
    rows = [[r.epoch, r.notebook, r.status + (f" ({r.error})" if r.error else ""), r.seconds] for r in results]
    rows.append([2, "all (incl. index)", "", total])
    demo = load_config("configs/demo.yaml")
    milestones = sorted(demo.milestone_epochs())
    gap = min(b - a for a, b in zip(milestones[:-1], milestones[1:]))
    per_epoch = median(list(epoch_seconds(run).values()))
    return rows, {"report_s": total, "between_s": gap * per_epoch, "gap": gap, "epoch_s": per_epoch}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=5000, help="data set size for (1) and (2)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="fresh-cache renders in (1)")
    p.add_argument("--resumes", type=int, default=3, help="resume start-ups timed in (2)")
    p.add_argument("--reports", choices=["demo", "quick", "full", "off"], default="demo",
                   help="(3): notebooks as `make demo` runs them (no sampler sweep), at quick=True sizes, at the run "
                        "config's full sizes (with the sampler sweep: slow on a CPU), or skip")
    p.add_argument("--quick", action="store_true", help="1 render of 1000 images, 1 resume, no reports")
    p.add_argument("--max-load", type=float, default=1.5)
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.rounds, args.resumes, args.reports = 1000, 1, 1, "off"
    os.chdir(REPO_ROOT)
    print(f"workflow: {args.samples} images at {args.resolution}px; threads: torch default in the child processes")
    with tempfile.TemporaryDirectory(prefix="t2ilab-bench-") as tmp:
        root = Path(tmp)
        print(f"  load average before measuring: {wait_for_quiet(args.max_load):.2f}")
        loads = [load_average()]
        render, reload, cache = time_data(args.samples, args.resolution, args.rounds, root)
        loads.append(load_average())
        print(f"\n(1) data set, {args.samples} images at {args.resolution}px (median of {args.rounds}):")
        print(format_table(["step", "seconds", "images/s"], [
            ["render + write cache (fresh cache dir)", median(render), args.samples / median(render)],
            ["reload from cache (checksum verified)", median(reload), args.samples / median(reload)]]))

        run = root / "run"
        common_args = ["--config", "configs/demo.yaml", "--progress", "none", "--set", f"output_dir={run}",
                       "--set", f"data.num_samples={args.samples}", "--set", f"data.resolution={args.resolution}",
                       "--set", f"data.cache_dir={cache}"]
        first = 3
        t2ilab_train(common_args + ["--max-steps", str(first)], root / "initial.log")
        resumes = []
        for i in range(args.resumes):
            resumes.append(t2ilab_train(common_args + ["--resume", "latest", "--max-steps", str(first + i + 1)],
                                        root / f"resume-{i}.log"))
            loads.append(load_average())
        keys = ["interpreter up", "t2ilab.training.train imported", "first step entered", "first step done", "exited"]
        print(f"\n(2) resume start-up: seconds after launching `python -m t2ilab train --resume latest --max-steps N` "
              f"(demo.yaml, {args.samples} samples; median of {args.resumes}):")
        print(format_table(["mark", "seconds after launch", "each run"],
                           [[k, median([m[k] for m in resumes]), ", ".join(f"{m[k]:.2f}" for m in resumes)] for k in keys]))
        startup = median([m["first step entered"] for m in resumes])

        report = "not measured: --reports off" if args.reports == "off" else time_reports(root, args.reports)
        print(f"\n(3) report set of a milestone with a previous one ({args.reports} notebook sizes):")
        print(report if isinstance(report, str) else format_table(["milestone", "notebook", "status", "seconds"], report[0]))
        loads.append(load_average())

    print(f"\nload average during measurement (includes this benchmark's own processes): "
          f"min {min(loads):.2f}, max {max(loads):.2f}")
    print(f"RATIO workflow data cached-reload/render = {median(reload) / median(render):.3f}x "
          f"({median(reload):.2f} s vs {median(render):.2f} s for {args.samples} images)")
    print(f"RATIO workflow resume-startup/target = {startup / TARGET_STARTUP_S:.2f}x "
          f"({startup:.2f} s from launch to the first new step; target < {TARGET_STARTUP_S:.0f} s; "
          f"{'met' if startup < TARGET_STARTUP_S else 'NOT met'})")
    if not isinstance(report, str):
        r = report[1]
        share = r["report_s"] / r["between_s"]
        print(f"RATIO workflow report-set/training-between-milestones = {share:.2f}x ({r['report_s']:.0f} s of reports "
              f"at {args.reports} sizes vs {r['between_s']:.0f} s = {r['gap']} demo epochs x {r['epoch_s']:.1f} s; "
              f"target <= {TARGET_REPORT_SHARE:.2f}; {'met' if share <= TARGET_REPORT_SHARE else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
