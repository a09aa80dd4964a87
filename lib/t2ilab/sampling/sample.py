"""`t2ilab sample` / `./run_inference.sh`: images, a JSON sidecar per image and a labelled grid from a checkpoint.

Every input is checked before anything is written; a bad one prints one line on stderr and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

import t2ilab
from t2ilab import image_grids
from t2ilab.config import SEED_MAX, run_sampling
from t2ilab.files import write_atomically
from t2ilab.paths import caller_path
from t2ilab.sampling.pipeline import SCHEDULERS, CheckpointWarning, check_prompt, load_pipeline
from t2ilab.training.checkpoint import CheckpointError, resolve_checkpoint

MAX_PROMPT_CHARS = 100_000  # longer prompts are refused (the text encoder reads only its first tokens anyway)
MAX_PROMPTS_FILE = 10_000_000  # bytes
GRID_CELL = 128  # grid images are upscaled (NEAREST) to about this many pixels


class UsageError(ValueError):
    """Bad command-line input; the message is printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message, and no SystemExit inside main()
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The `t2ilab sample` flags; underscore and dashed spellings are both accepted."""
    p = _Parser(prog="t2ilab sample", description="Generate images from a t2ilab checkpoint.")
    p.add_argument("--checkpoint", required=True, help='checkpoint folder, an output dir (its latest checkpoint), or "latest"')
    p.add_argument("--output_dir", "--output-dir", default="./outputs", help='where "latest" looks (default ./outputs)')
    p.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    p.add_argument("--prompts-file", "--prompts_file", dest="prompts_file", help="one prompt per line; # starts a comment")
    p.add_argument("--negative_prompt", "--negative-prompt", default=None, help='replaces "" as the unconditional prompt')
    p.add_argument("--num_inference_steps", "--num-inference-steps", type=int, default=None,
                   help="denoising steps (default: the run's sampling.num_inference_steps)")
    p.add_argument("--scheduler", default=None, help=f"sampler (default: the run's sampling.scheduler): {', '.join(SCHEDULERS)}")
    p.add_argument("--guidance_scale", "--guidance-scale", type=float, default=None,
                   help="classifier-free guidance; 1 = off (default: the run's sampling.guidance_scale)")
    p.add_argument("--guidance_rescale", "--guidance-rescale", type=float, default=0.0, help="0..1, https://arxiv.org/abs/2305.08891 (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image of each prompt (default 0)")
    p.add_argument("--num_images", "--num-images", type=int, default=1, help="images per prompt, seeds S..S+K-1 (default 1)")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"], help="EMA (default) or raw UNet weights")
    p.add_argument("--output", default=None, help="folder for the images (default ./samples/<run>/<checkpoint>)")
    p.add_argument("--overwrite", action="store_true", help="replace images already in --output (refused without it)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run `t2ilab sample`; returns the exit code (2 for bad input)."""
    try:
        args = build_parser().parse_args(argv)
        for name in ("checkpoint", "output", "output_dir", "prompts_file"):
            setattr(args, name, caller_path(getattr(args, name)))
        prompts = _read_prompts(args)
        checkpoint = resolve_checkpoint(args.checkpoint, args.output_dir if args.checkpoint == "latest" else None)
        _fill_run_defaults(args, checkpoint)
        _check_numbers(args)
        jobs = [(p, args.seed + k) for p in prompts for k in range(args.num_images)]
        names = [f"{i:03d}_{_slug(p)}_seed{seed}" for i, (p, seed) in enumerate(jobs)]
        out = _output_folder(args, checkpoint, names)
        _check_writable(out)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe = load_pipeline(checkpoint, weights=args.weights, scheduler=args.scheduler, device=args.device)
        for w in caught:
            if issubclass(w.category, CheckpointWarning):
                print(f"warning: {w.message}", file=sys.stderr)
            else:  # library warnings pass through as usual
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (UsageError, CheckpointError, ValueError) as exc:
        print(f"t2ilab sample: error: {exc}", file=sys.stderr)
        return 2

    checks = {p: check_prompt(pipe, p) for p in dict.fromkeys(prompts)}
    for p, check in checks.items():
        for problem in check["problems"]:
            print(f"warning: prompt {_short(p)!r}: {problem}", file=sys.stderr)

    out.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        _sample_all(args, pipe, jobs, names, checks, out, written)
    except KeyboardInterrupt:
        print(f"interrupted: {len(written)} complete images and their .json sidecars are in {out} (no grid written)",
              file=sys.stderr)
        return 130
    grid = make_grid(written, columns=args.num_images)
    write_atomically(out / "grid.png", lambda f: grid.save(f, format="PNG"))
    print(f"wrote {len(written)} images and their .json sidecars to {out}")
    print(f"grid: {out / 'grid.png'}")
    return 0


def _sample_all(args, pipe, jobs, names, checks, out: Path, written: list) -> None:
    """Sample every (prompt, seed) in batches; each image and sidecar is written whole as soon as it exists."""
    with tqdm(total=len(jobs), desc="sampling", unit="img", file=sys.stderr) as bar:
        for start in range(0, len(jobs), args.batch_size):
            batch = jobs[start : start + args.batch_size]
            began = time.perf_counter()
            images = pipe(
                [p for p, _ in batch], negative_prompt=args.negative_prompt, num_inference_steps=args.num_inference_steps,
                guidance_scale=args.guidance_scale, guidance_rescale=args.guidance_rescale, seed=[s for _, s in batch],
            ).images
            seconds = (time.perf_counter() - began) / len(batch)  # a batch's time shared equally by its images
            for i, ((prompt, seed), image) in enumerate(zip(batch, images), start=start):
                name = names[i]
                sidecar = _sidecar(args, pipe, prompt, seed, seconds, checks[prompt], f"{name}.png")
                write_atomically(out / f"{name}.png", lambda f, im=image: im.save(f, format="PNG"))
                write_atomically(out / f"{name}.json", lambda f, d=sidecar: f.write(json.dumps(d, indent=2).encode()))
                written.append((image, prompt, seed))
            bar.update(len(batch))


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if path.exists() and not path.is_file():
            raise UsageError(f"--prompts-file {path} is not a regular file (a folder, FIFO or device); pass a text file")
        if path.is_file() and path.stat().st_size > MAX_PROMPTS_FILE:
            raise UsageError(f"--prompts-file {path} is {path.stat().st_size} bytes; at most {MAX_PROMPTS_FILE}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise UsageError(f"prompts file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"prompts file {path} is unreadable: {exc}") from None
        prompts += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    long = [p for p in prompts if len(p) > MAX_PROMPT_CHARS]
    if long:
        raise UsageError(f"a prompt has {len(long[0])} characters; at most {MAX_PROMPT_CHARS} (the model reads only its first tokens)")
    if not prompts:
        raise UsageError('no prompt given: pass --prompt "a red circle" (repeatable) or --prompts-file FILE')
    return prompts


def _fill_run_defaults(args, checkpoint: Path) -> None:
    """Settings not given on the command line come from the run's config (sampling.*), as in its reports."""
    run = run_sampling(checkpoint)
    for flag, key in (("num_inference_steps", "num_inference_steps"), ("scheduler", "scheduler"), ("guidance_scale", "guidance_scale")):
        if getattr(args, flag) is None:
            setattr(args, flag, getattr(run, key))


def _check_numbers(args) -> None:
    """The pipeline checks these too; checking here fails before a model is loaded."""
    if args.num_inference_steps < 1:
        raise UsageError(f"num_inference_steps must be ≥ 1, got {args.num_inference_steps}")
    for flag, value, top in (("--num_inference_steps", args.num_inference_steps, 1000), ("--num_images", args.num_images, 10_000),
                             ("--batch-size", args.batch_size, 256), ("--seed", args.seed, SEED_MAX)):
        if value > top:
            raise UsageError(f"{flag} {value} is above the limit of {top}")
    if args.seed < 0:
        raise UsageError(f"--seed must be from 0 to {SEED_MAX}, got {args.seed}")
    for flag, value in (("--guidance_scale", args.guidance_scale), ("--guidance_rescale", args.guidance_rescale)):
        if not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number, got {value}")
    if args.guidance_scale > 50:
        raise UsageError(f"--guidance_scale {args.guidance_scale} is above the limit of 50 (3 to 7 is usual)")
    if args.scheduler not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {args.scheduler!r}; valid names: {', '.join(SCHEDULERS)}")
    if args.guidance_scale < 1:
        raise UsageError(
            f"--guidance_scale {args.guidance_scale}: guidance_scale < 1 has no meaning for classifier-free guidance; "
            f"use 1 to disable guidance"
        )
    if not 0 <= args.guidance_rescale <= 1:
        raise UsageError(f"--guidance_rescale must be in [0, 1], got {args.guidance_rescale}")
    if args.num_images < 1 or args.batch_size < 1:
        raise UsageError(f"--num_images and --batch-size must be ≥ 1, got {args.num_images} and {args.batch_size}")


def _output_folder(args, checkpoint: Path, names: list[str]) -> Path:
    """--output as given (refused when it would replace files, unless --overwrite), else the first free default."""
    planned = [f"{n}{ext}" for n in names for ext in (".png", ".json")] + ["grid.png"]
    if args.output:
        out = Path(args.output)
        taken = [n for n in planned if (out / n).exists()] if out.is_dir() else []
        if taken and not args.overwrite:
            raise UsageError(
                f"--output {out} already holds {len(taken)} of the files this run would write (e.g. {taken[0]}); "
                f"pass another --output, or --overwrite to replace them"
            )
        return out
    base = Path("samples") / checkpoint.parent.name / checkpoint.name
    out, n = base, 1
    while out.is_dir() and any((out / name).exists() for name in planned):
        n += 1
        out = base.with_name(f"{base.name}-{n}")  # an earlier sample run is kept; this one goes next to it
    return out


def _check_writable(out: Path) -> None:
    """Fail before sampling if `out` cannot be created or written; creates nothing that stays."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot write to {out}: {probe} is a file, not a folder; pass another --output")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to {out}: {probe} is not writable ({exc.strerror}); pass another --output") from None


def _sidecar(args, pipe, prompt: str, seed: int, seconds: float, check: dict, image: str) -> dict:
    return {
        "image": image,
        "checkpoint": pipe.checkpoint_path,
        "epoch": pipe.manifest.get("epoch"),
        "global_step": pipe.manifest.get("global_step"),
        "prompt": prompt,
        "negative_prompt": args.negative_prompt,
        "scheduler": args.scheduler,
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "guidance_rescale": args.guidance_rescale,
        "seed": seed,
        "weights": pipe.weights,
        "seconds": round(seconds, 4),
        "unknown_words": check["unknown_words"],
        "truncation": check["truncation"],
        "resolution": pipe.resolution,
        "device": str(pipe.unet.device),
        "t2ilab_version": t2ilab.__version__,
    }


def _slug(prompt: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].rstrip("-")
    return slug or "unconditional"


def _short(prompt: str, limit: int = 40) -> str:
    return prompt if len(prompt) <= limit else prompt[: limit - 3] + "..."


def make_grid(items: list[tuple[Image.Image, str, int]], columns: int) -> Image.Image:
    """Images upscaled NEAREST in rows of `columns`, each with its prompt (two lines at most) and seed underneath."""
    cell = items[0][0].width * max(1, GRID_CELL // items[0][0].width)
    captions = [image_grids.wrap(prompt or '"" (unconditional)', cell - 2, 2) + [f"seed {seed}"] for _, prompt, seed in items]
    return image_grids.captioned_grid([image for image, _, _ in items], captions, columns, cell)


if __name__ == "__main__":
    raise SystemExit(main())
