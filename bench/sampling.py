"""Sampling speed: images/s per scheduler and step count for one checkpoint (classifier-free guidance on, the
config's guidance scale), cells timed in interleaved rounds; with --judge N also the judge score per cell
(t2ilab.review.quality.sampler_sweep, N prompts per category) and the speed-up at equal quality over the old guide's
advice, DDIM with 100 steps: the fastest cell whose score is >= DDIM-100's lower 95% bound.

    .venv/bin/python bench/sampling.py                       # latest checkpoint in ./outputs/demo, else untrained
    .venv/bin/python bench/sampling.py --quick
    .venv/bin/python bench/sampling.py --checkpoint outputs/demo/checkpoint-epoch-0012 --judge 8

Timing does not depend on the weights, so an untrained demo-size checkpoint times correctly; judge scores
need a trained one (they are skipped for the untrained stand-in).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from common import REPO_ROOT, format_table, interleaved_rounds, load_average, median, omp_note, wait_for_quiet
from diffusers import UNet2DConditionModel
from diffusers.training_utils import EMAModel
from t2ilab.config import load_config
from t2ilab.datasets.data import load_dataset
from t2ilab.sampling.pipeline import SCHEDULERS, load_pipeline
from t2ilab.sampling.schedulers import valid_schedulers
from t2ilab.training.checkpoint import (
    CheckpointError,
    checkpoint_name,
    resolve_checkpoint,
    save_model_parts,
    write_checkpoint,
)
from t2ilab.training.model import build_noise_scheduler, build_unet
from t2ilab.training.text import build_text_encoder, caption_vocabulary

SCHEDULER_NAMES = ("ddpm", "ddim", "dpmsolver++", "unipc", "euler", "euler_ancestral", "heun")
PROMPTS = ["a red circle", "two squares", "a circle and a triangle", "three green triangles",
           "a blue square", "a yellow square on the left", "a red circle above a blue square", "a large triangle"]


def untrained_checkpoint(config: str, root: Path) -> Path:
    """A demo-size checkpoint with random weights (timing only), written like the Trainer writes one."""
    cfg = load_config(config, [f"output_dir={root}"])
    captions = load_dataset(cfg.data).captions
    torch.manual_seed(0)
    text_encoder, tokenizer, _ = build_text_encoder(cfg.model, captions)
    unet = build_unet(cfg.model, cfg.data.resolution, text_encoder.config.hidden_size)
    ema = EMAModel(unet.parameters(), model_cls=UNet2DConditionModel, model_config=unet.config)
    scheduler, vocabulary = build_noise_scheduler(cfg.noise), caption_vocabulary(captions)
    return write_checkpoint(root, checkpoint_name(0),
                            lambda d: save_model_parts(d, unet, ema, text_encoder, tokenizer, scheduler, vocabulary, cfg),
                            manifest={"epoch": 0, "global_step": 0, "end_of_epoch": True}, modules=[unet, text_encoder])


def model_evaluations(pipe, scheduler: str, steps: int) -> int:
    """UNet calls per image batch: len(timesteps) (Heun evaluates twice per step but the last)."""
    pipe.set_scheduler(scheduler)
    pipe.scheduler.set_timesteps(steps)
    return len(pipe.scheduler.timesteps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="checkpoint folder or run dir (default: latest in ./outputs/demo, else an untrained demo-size one)")
    p.add_argument("--config", default="configs/demo.yaml", help="sizes of the untrained stand-in and the guidance scale")
    p.add_argument("--schedulers", default=",".join(SCHEDULER_NAMES))
    p.add_argument("--steps", default="10,20,50,100")
    p.add_argument("--images", type=int, default=4, help="images per pipeline call (CFG doubles the UNet batch)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each times one call per cell")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--judge", type=int, default=0, metavar="N", help="also judge N prompts per category per cell (0: off)")
    p.add_argument("--quick", action="store_true", help="ddim and dpmsolver++ at 10 and 20 steps, 2 images, 1 round")
    p.add_argument("--max-load", type=float, default=1.5)
    args = p.parse_args(argv)
    if args.quick:
        args.schedulers, args.steps, args.images, args.rounds = "ddim,dpmsolver++", "10,20", 2, 1
    schedulers, step_counts = args.schedulers.split(","), [int(s) for s in args.steps.split(",")]
    unknown = [s for s in schedulers if s not in SCHEDULERS]
    if unknown:
        p.error(f"unknown scheduler(s) {unknown}; valid: {', '.join(SCHEDULERS)}")
    os.chdir(REPO_ROOT)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    guidance = cfg.sampling.guidance_scale
    tmp = tempfile.TemporaryDirectory(prefix="t2ilab-bench-")
    untrained = False
    try:
        checkpoint = resolve_checkpoint(args.checkpoint or "latest", None if args.checkpoint else "outputs/demo")
    except CheckpointError as exc:
        if args.checkpoint:
            p.error(str(exc))
        checkpoint, untrained = untrained_checkpoint(args.config, Path(tmp.name)), True
    pipe = load_pipeline(checkpoint, device="cpu")
    size = pipe.unet.config.sample_size
    valid = valid_schedulers(pipe.scheduler.config)  # a flow-matching checkpoint samples with flow_euler only
    if any(s not in valid for s in schedulers):
        print(f"skipping {', '.join(s for s in schedulers if s not in valid)}: not valid for this checkpoint's objective")
        schedulers = [s for s in schedulers if s in valid] or list(valid)
    what = "UNTRAINED demo-size stand-in (no ./outputs/demo checkpoint; timing only)" if untrained else str(checkpoint)
    print(f"sampling: {what}; {size}px, {args.images} images per call, guidance {guidance}, {args.threads} threads, cpu fp32")

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
    cells = [(s, n) for s in schedulers for n in step_counts]
    nfe = {cell: model_evaluations(pipe, *cell) for cell in cells}

    def runner(cell):
        def run(calls: int) -> int:
            pipe.set_scheduler(cell[0])
            for _ in range(calls):
                pipe(prompts, seed=0, num_inference_steps=cell[1], guidance_scale=guidance, output_type="np")
            return calls * args.images
        return run

    runners = {f"{s}-{n}": runner((s, n)) for s, n in cells}
    runner(cells[0])(1)  # warm-up (first-call allocations)
    print(f"  load average before measuring: {wait_for_quiet(args.max_load):.2f}")
    rates, loads = interleaved_rounds(runners, args.rounds, 1, 0, log=lambda s: print(s[:160] + " ..."))
    speed = {cell: median(rates[f"{cell[0]}-{cell[1]}"]) for cell in cells}

    scores = {}
    if args.judge and untrained:
        print("judge skipped: the stand-in checkpoint is untrained (every cell would score ~0)")
    elif args.judge:
        from t2ilab.review import quality  # imported here: only --judge needs it
        sweep = quality.sampler_sweep(pipe, schedulers=schedulers, steps=step_counts, guidance_scales=(guidance,),
                                      n_per_category=args.judge)
        scores = {(r.scheduler, int(r.steps)): (r.accuracy, r.ci_low, r.ci_high) for r in sweep.itertuples()}

    # The old guide's advice, DDIM-100; for a flow-matching model (no DDIM) its one sampler at the most steps.
    base_name = "ddim" if "ddim" in schedulers else schedulers[0]
    base_cell = max((c for c in cells if c[0] == base_name), key=lambda c: c[1], default=None)
    headers = ["scheduler", "steps", "UNet calls", "images/s", "s/image", "vs " + (f"{base_cell[0]}-{base_cell[1]}" if base_cell else "-")]
    if scores:
        headers += ["judge", "95% CI"]
    rows = []
    for cell in cells:
        row = [cell[0], cell[1], nfe[cell], speed[cell], 1 / speed[cell], f"{speed[cell] / speed[base_cell]:.2f}x" if base_cell else "-"]
        if scores:
            acc, low, high = scores[cell]
            row += [f"{acc:.3f}", f"[{low:.3f}, {high:.3f}]"]
        rows.append(row)
    print(f"\nimages/s per cell (median of {args.rounds} interleaved round(s)):")
    print(format_table(headers, rows))
    print(f"\nload average during measurement (includes this benchmark's own threads): "
          f"min {min(loads):.2f}, max {max(loads):.2f}; now {load_average():.2f}")
    tmp.cleanup()

    where = f"{size}px, {args.images} images/call, guidance {guidance}, {args.threads} threads{omp_note()}, cpu"
    if base_cell is None:
        print("RATIO sampling: not measured (no cell to compare against)")
    elif scores:
        floor = scores[base_cell][1]
        equal = [c for c in cells if scores[c][0] >= floor]
        best = max(equal, key=lambda c: speed[c])
        print(f"RATIO sampling fastest-equal-quality/{base_cell[0]}-{base_cell[1]} = {speed[best] / speed[base_cell]:.1f}x "
              f"({best[0]}-{best[1]} scores {scores[best][0]:.3f} >= {base_cell[0]}-{base_cell[1]}'s CI low {floor:.3f}; "
              f"judge {args.judge}/category, {where})")
    else:
        default = (cfg.sampling.scheduler, cfg.sampling.num_inference_steps)
        if default in speed:
            print(f"RATIO sampling {default[0]}-{default[1]}/{base_cell[0]}-{base_cell[1]} = "
                  f"{speed[default] / speed[base_cell]:.1f}x (speed only, no --judge: the config's default sampler; {where})")
        else:
            fastest = max(cells, key=lambda c: speed[c])
            print(f"RATIO sampling fastest/{base_cell[0]}-{base_cell[1]} = {speed[fastest] / speed[base_cell]:.1f}x "
                  f"(speed only, no --judge: {fastest[0]}-{fastest[1]}; {where})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
