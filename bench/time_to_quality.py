"""Time to quality: training wall-clock and steps until the judge's overall score reaches a target, t2ilab's
recipe vs a plain one on the same model, data, batch size, step budget and seed; or (--levers) recipe levers
against a baseline recipe at fixed optimiser-step marks.

    .venv/bin/python bench/time_to_quality.py                 # demo.yaml, both recipes, ~16 min on 2 CPU cores
    .venv/bin/python bench/time_to_quality.py --quick         # t2ilab 4 epochs, plain as long; smoke-test size
    .venv/bin/python bench/time_to_quality.py --levers --epochs 8 --every 4 --judge 50 --write-results
                                                              # baseline vs each lever arm

Levers (--levers; lever_study.py): every arm is demo.yaml set to the baseline recipe (v-prediction + Min-SNR-5,
scratch text encoder: demo.yaml before the study) plus its levers, trained from scratch for the same
--epochs (so the same steps and the same cosine schedule), judged at every --every epochs on the same prompts and
seeds; the table gives strict overall and each skill with Wilson 95 % CIs, Newcombe's verdict against the baseline arm
at the same step, and seconds per step (wall clock: on a shared CPU it is the noisiest column).

Recipes (everything else is the config's):
  t2ilab  the config as written (demo.yaml: flow matching with logit-normal t, EMA (sampled from), cosine LR with
          warm-up)
  plain   what diffusers' train_text_to_image.py does by default: DDPM epsilon prediction, plain MSE, no EMA,
          constant LR, no warm-up (sampled with DPM-Solver++); the model (UNet, CoordConv, text encoder) is the same
Both keep the config's caption dropout, because both are sampled with classifier-free guidance.

t2ilab's recipe trains first, for --epochs, with a checkpoint every --every epochs. The plain recipe then gets
--plain-budget times the training seconds t2ilab needed to reach --target (resumed --every epochs at a time until
its logged epoch times add up to that: its step is cheaper without EMA), so the benchmark can tell "plain is >= that many times slower" from "plain got there": a shared budget could only
show > 1x. Every checkpoint is judged with the config's sampler on --judge prompts per category (the same prompts
and seeds for both). Training time is the sum of the logged epoch times (validation and checkpoint writes
excluded, the same for both).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from common import REPO_ROOT, epoch_seconds, format_table, load_average, omp_note, wait_for_quiet
from t2ilab.config import load_config
from t2ilab.review.quality import score_checkpoint
from t2ilab.training.checkpoint import list_checkpoints
from t2ilab.training.train import train

PLAIN = ["noise.objective=diffusion", "sampling.scheduler=dpmsolver++", "noise.prediction_type=epsilon", "training.snr_gamma=null", "training.use_ema=false",
         "training.lr_scheduler=constant", "training.lr_warmup_steps=0"]
RECIPES = {"t2ilab": [], "plain": PLAIN}



def run_recipe(name: str, config: str, overrides: list[str], root: Path, judge_n: int, epochs: int, every: int,
               min_seconds: float = 0.0) -> list[dict]:
    """Train one recipe (resumed `every` epochs at a time until its training time reaches `min_seconds`) and judge
    every checkpoint: [{epoch, step, seconds, score, ci_low, ci_high}]."""

    def config_for(num_epochs: int):
        return load_config(config, overrides + RECIPES[name] + [
            f"output_dir={root / name}", f"training.num_epochs={num_epochs}", f"training.checkpoint_every_n_epochs={every}",
            "reports.on_milestone=false", "reports.milestones=[]", "reports.every_n_epochs=null"])

    cfg = config_for(epochs)
    print(f"\n[{name}] training {cfg.training.num_epochs} epochs: {' '.join(RECIPES[name]) or 'the config as written'}",
          flush=True)
    train(cfg)
    seconds = epoch_seconds(Path(cfg.output_dir))
    while sum(seconds.values()) < min_seconds:  # a faster step (no EMA) must not shrink the budget below the target
        epochs += every
        print(f"[{name}] {sum(seconds.values()):.0f} s < {min_seconds:.0f} s of training: resuming to epoch {epochs}", flush=True)
        cfg = config_for(epochs)
        train(cfg, resume="latest")
        seconds = epoch_seconds(Path(cfg.output_dir))
    rows = []
    for path, manifest in list_checkpoints(cfg.output_dir):
        weights = "ema" if cfg.training.use_ema else "raw"
        scores = score_checkpoint(path, n_per_category=judge_n, scheduler=cfg.sampling.scheduler,
                                  steps=cfg.sampling.num_inference_steps, guidance=cfg.sampling.guidance_scale,
                                  weights=weights)
        overall = scores.set_index("category").loc["overall"]
        epoch = manifest["epoch"]
        rows.append({"epoch": epoch, "step": manifest["global_step"],
                     "seconds": sum(s for e, s in seconds.items() if e <= epoch),
                     "score": float(overall["accuracy"]), "ci_low": float(overall["ci_low"]),
                     "ci_high": float(overall["ci_high"])})
        print(f"[{name}] epoch {epoch}: overall {rows[-1]['score']:.3f} "
              f"[{rows[-1]['ci_low']:.3f}, {rows[-1]['ci_high']:.3f}] ({weights} weights)", flush=True)
    return rows


def first_reaching(rows: list[dict], target: float) -> dict | None:
    return next((r for r in rows if r["score"] >= target), None)


def plain_budget(t2ilab_rows: list[dict], target: float, every: int, budget: float) -> tuple[int, float]:
    """(epochs, training seconds) for the plain recipe: `budget` x what t2ilab needed to reach the target (all
    of its run when it never did), the epochs rounded up to a checkpoint."""
    reached = first_reaching(t2ilab_rows, target) or t2ilab_rows[-1]
    return math.ceil(budget * reached["epoch"] / every) * every, budget * reached["seconds"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--epochs", type=int, default=14, help="t2ilab's recipe (its cosine schedule spans these)")
    p.add_argument("--plain-budget", type=float, default=2.0, metavar="X",
                   help="the plain recipe trains X times the training time t2ilab needed (the target ratio to test)")
    p.add_argument("--every", type=int, default=2, help="checkpoint (and judge) every N epochs")
    p.add_argument("--judge", type=int, default=50, metavar="N", help="prompts per category per checkpoint")
    p.add_argument("--target", type=float, default=0.05, help="overall judge score to reach")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="t2ilab 4 epochs, plain as long, checkpoint every 2, 8 prompts per category")
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both recipes")
    p.add_argument("--levers", action="store_true", help="the lever study (baseline vs flow matching, CoordConv, MiniLM, data size, ...)")
    p.add_argument("--arms", default=None, help="--levers: comma-separated arms to run (default all: "
                                                "baseline,flow_matching,coord_channels,flow+coords,minilm,"
                                                "flow+coords+minilm,word_embeddings)")
    p.add_argument("--write-results", action="store_true", help="--levers: put the table into bench/RESULTS.md")
    args = p.parse_args(argv)
    if args.levers:
        from lever_study import run_levers

        return run_levers(args)
    if args.quick:
        args.epochs, args.every, args.judge, args.plain_budget = 4, 2, 8, 1.0
    os.chdir(REPO_ROOT)
    torch.set_num_threads(args.threads)
    print(f"time to quality: {args.config} {' '.join(args.overrides)}; t2ilab {args.epochs} epochs, plain "
          f"{args.plain_budget:g}x the training time t2ilab needed; judged every {args.every} on {args.judge} prompts/category; "
          f"target overall >= {args.target}")
    print(f"  load average before measuring: {wait_for_quiet(args.max_load):.2f}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="t2ilab-ttq-") as tmp:
        for name in RECIPES:
            epochs, seconds = ((args.epochs, 0.0) if name == "t2ilab" else
                               plain_budget(results["t2ilab"], args.target, args.every, args.plain_budget))
            t0 = time.perf_counter()
            results[name] = run_recipe(name, args.config, args.overrides, Path(tmp), args.judge, epochs, args.every, seconds)
            print(f"[{name}] done in {time.perf_counter() - t0:.0f} s (training + judging); load {load_average():.2f}")

    headers = ["epoch", "step"] + [f"{n} {c}" for n in RECIPES for c in ("s", "score", "95% CI")]
    rows = []
    for i, b in enumerate(results["plain"]):
        a = results["t2ilab"][i] if i < len(results["t2ilab"]) else None
        cells = [x for r in (a, b) for x in ((r["seconds"], f"{r['score']:.3f}", f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]")
                                             if r else ("", "", ""))]
        rows.append([b["epoch"], b["step"]] + cells)
    print("\njudge score (overall, mean of 6 categories) by training time:")
    print(format_table(headers, rows))

    ours, plain = (first_reaching(results[n], args.target) for n in ("t2ilab", "plain"))
    where = f"{args.judge}/category, {args.threads} threads{omp_note()}, cpu"
    if ours is None:
        print(f"RATIO time-to-quality: not reached (t2ilab's recipe stayed below {args.target} in {args.epochs} epochs; {where})")
    elif plain is None:
        budget = results["plain"][-1]["seconds"]
        print(f"RATIO time-to-quality plain/t2ilab > {budget / ours['seconds']:.1f}x (t2ilab reached {args.target} at "
              f"epoch {ours['epoch']}, {ours['seconds']:.0f} s; plain never did in {results['plain'][-1]['epoch']} epochs, "
              f"{budget:.0f} s; {where})")
    else:
        print(f"RATIO time-to-quality plain/t2ilab = {plain['seconds'] / ours['seconds']:.1f}x (overall >= {args.target}: "
              f"t2ilab epoch {ours['epoch']} {ours['seconds']:.0f} s, plain epoch {plain['epoch']} {plain['seconds']:.0f} s; {where})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
