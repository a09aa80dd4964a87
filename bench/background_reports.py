"""How much do milestone reports running beside training (reports.on_milestone: true) slow training down?

    .venv/bin/python bench/background_reports.py            # demo.yaml, 8 epochs, reports after epoch 2 (~7 min)
    .venv/bin/python bench/background_reports.py --quick    # 4 epochs

Two training runs of the same config, one after the other: without reports, then with the milestone at
--milestone reported in a separate process while training goes on (what the trainer does on a milestone). Compared:
the wall-clock of the epochs after the milestone (the ones that share the CPU with the reports) in both runs,
and the training run's total. The background report is what `t2ilab train` starts: the notebooks' default
parameters, sampler sweep included; if it is still running when training ends it is stopped.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

import torch
from common import REPO_ROOT, epoch_seconds, format_table, load_average, omp_note, wait_for_quiet
from t2ilab.config import load_config
from t2ilab.reporting.reports import milestone_callback
from t2ilab.training.train import train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--milestone", type=int, default=2, help="the epoch whose reports run in the background")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="4 epochs, milestone 1")
    p.add_argument("--max-load", type=float, default=1.5)
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.milestone = 4, 1
    os.chdir(REPO_ROOT)
    torch.set_num_threads(args.threads)
    print(f"background reports: {args.config}, {args.epochs} epochs, reports of epoch {args.milestone} beside training")
    print(f"  load average before measuring: {wait_for_quiet(args.max_load):.2f}")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="t2ilab-bgr-") as tmp:
        for name, on in (("no reports", False), ("reports beside training", True)):
            overrides = [f"output_dir={Path(tmp) / name.replace(' ', '_')}", f"training.num_epochs={args.epochs}",
                         f"reports.milestones=[{args.milestone}]", f"reports.on_milestone={str(on).lower()}",
                         f"reports.reports_dir={Path(tmp) / 'reports'}", f"training.checkpoint_every_n_epochs={args.epochs}"]
            cfg = load_config(args.config, overrides)
            children = []
            callback = milestone_callback(cfg)  # what `t2ilab train` passes when reports.on_milestone is set
            t0 = time.perf_counter()

            def started(path, epoch):  # keep the process handle, and hand it on: the trainer watches it too
                children.append(callback(path, epoch))
                return children[-1]

            train(cfg, on_milestone=started if callback else None)
            total = time.perf_counter() - t0
            runs[name] = {"total": total, "epochs": epoch_seconds(Path(cfg.output_dir))}
            running = [c for c in children if c.poll() is None]
            print(f"  {name}: {total:.0f} s; load {load_average():.2f}"
                  + (f"; background report still running at the end: {bool(running)}" if on else ""), flush=True)
            for child in running:  # the measurement is over; a full sweep could run for many more minutes
                os.killpg(child.pid, signal.SIGTERM)
                child.wait()
    after = range(args.milestone + 1, args.epochs + 1)
    rows = [[e] + [runs[n]["epochs"].get(e, float("nan")) for n in runs] for e in after]
    print(format_table(["epoch"] + [f"{n} (s)" for n in runs], rows))
    base = sum(runs["no reports"]["epochs"][e] for e in after)
    loaded = sum(runs["reports beside training"]["epochs"][e] for e in after)
    print(f"training totals: {runs['no reports']['total']:.0f} s vs {runs['reports beside training']['total']:.0f} s")
    print(f"RATIO background-reports epochs {after.start}-{after.stop - 1} slowdown = {loaded / base:.2f}x "
          f"({loaded:.0f} s vs {base:.0f} s; whole run {runs['reports beside training']['total'] / runs['no reports']['total']:.2f}x; "
          f"{args.threads} threads{omp_note()}, cpu)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
