"""`t2ilab export CHECKPOINT OUTPUT [--weights ema|raw]`: a checkpoint as a folder that plain diffusers loads.

Pixel mode writes unet/ text_encoder/ tokenizer/ scheduler/ and pipeline_t2ilab.py, which model_index.json names,
so `DiffusionPipeline.from_pretrained(OUTPUT, trust_remote_code=True)` loads it without t2ilab installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from t2ilab.checkpoint import CheckpointError, quiet_hub_progress, resolve_checkpoint
from t2ilab.paths import caller_path
from t2ilab.config import ConfigError, load_config
from t2ilab.export_pipeline import pipeline_t2ilab
from t2ilab.pipeline import METADATA_FILE, load_pipeline

PIPELINE_FILE = Path(pipeline_t2ilab.__file__)  # a module of a subpackage, so every wheel carries it
PIPELINE_CLASS = [PIPELINE_FILE.stem, pipeline_t2ilab.T2ILabPipeline.__name__]  # model_index.json _class_name
LOADING = "DiffusionPipeline.from_pretrained({path!r}, trust_remote_code=True)"


class ExportError(ValueError):
    """The export cannot be written as asked; the message says why and what to do."""


def image_space(cfg) -> str:
    """"pixel", or "latent" once a config can name a VAE (model.vae)."""
    return "latent" if getattr(cfg.model, "vae", None) else "pixel"


def check_output(output: Path) -> None:
    """Refuse an OUTPUT that holds anything (an export never overwrites) or is not a folder."""
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise ExportError(f"OUTPUT {output} is a file or a link; give a new folder (or an empty one) to export into")
    if output.is_dir() and any(output.iterdir()):
        raise ExportError(
            f"OUTPUT {output} already exists and is not empty; t2ilab export never overwrites. "
            f"Give a new folder, or move {output} away first."
        )


def export_checkpoint(checkpoint: str | Path, output: str | Path, weights: str = "ema") -> Path:
    """Write `output` from a checkpoint folder (or an output dir's newest); returns the folder written."""
    if weights not in ("ema", "raw"):
        raise ExportError(f"--weights must be 'ema' or 'raw', got {weights!r}")
    path = resolve_checkpoint(checkpoint)
    output = Path(output)
    check_output(output)
    if weights == "ema" and not (path / "unet_ema").is_dir():
        raise ExportError(
            f"checkpoint {path} has no EMA weights (no unet_ema/: training.use_ema was off); "
            f"export the trained weights with --weights raw"
        )
    try:
        cfg = load_config(path / "config.yaml")
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: config.yaml does not load ({exc})") from None
    space = image_space(cfg)
    if space not in LAYOUTS:
        raise ExportError(f"checkpoint {path} is in {space} mode; its export layout is not built yet (pixel mode only)")

    # Written next to OUTPUT and renamed into place when complete: an interrupted export leaves no half folder.
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".tmp-export-{output.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        LAYOUTS[space](path, cfg, weights, tmp)
        if output.is_dir():
            output.rmdir()  # empty (checked above); a folder that filled up meanwhile makes this fail, losing nothing
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def write_pixel_layout(path: Path, cfg, weights: str, folder: Path) -> None:
    """The T2ILabPipeline layout: the model parts, the pipeline file and model_index.json naming it."""
    # load_pipeline does what sampling does: EMA counters stripped, tokenizer cut to model.max_caption_tokens,
    # the sampler built from the training schedule's config.
    source = load_pipeline(path, weights=weights, scheduler=cfg.sampling.scheduler, device="cpu")
    pipe = pipeline_t2ilab.T2ILabPipeline(
        unet=source.unet, text_encoder=source.text_encoder, tokenizer=source.tokenizer, scheduler=source.scheduler,
        num_inference_steps=cfg.sampling.num_inference_steps, guidance_scale=cfg.sampling.guidance_scale,
    )
    quiet_hub_progress()
    pipe.save_pretrained(folder)
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text(encoding="utf-8"))
    index["_class_name"] = PIPELINE_CLASS  # [module file, class]: diffusers' form for a pipeline shipped in the folder
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    shutil.copyfile(PIPELINE_FILE, folder / PIPELINE_FILE.name)
    # The keys T2IPipeline.save_pretrained writes, and how this folder was made.
    meta = {
        "vocabulary": source.vocabulary, "checkpoint_path": str(path), "manifest": source.manifest,
        "weights": source.weights, "image_space": "pixel", "scheduler": cfg.sampling.scheduler,
        "load_with": LOADING.format(path="<this folder>"),
    }
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


# image space -> writer(checkpoint, cfg, weights, folder). Latent mode adds a StableDiffusionPipeline layout here.
LAYOUTS = {"pixel": write_pixel_layout}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise ExportError(message)


def build_parser() -> argparse.ArgumentParser:
    """The `t2ilab export` arguments."""
    p = _Parser(prog="t2ilab export", description="Write a checkpoint as a folder diffusers loads without t2ilab.")
    p.add_argument("checkpoint", help="a checkpoint-epoch-N folder, or an output dir (its newest checkpoint)")
    p.add_argument("output", help="a new (or empty) folder to write")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"], help="EMA (default) or raw UNet weights")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run `t2ilab export`; returns the exit code (2 for bad input)."""
    try:
        args = build_parser().parse_args(argv)
        out = export_checkpoint(caller_path(args.checkpoint), caller_path(args.output), weights=args.weights)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (ExportError, CheckpointError) as exc:
        print(f"t2ilab export: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions: the partial folder is already removed
        print(f"t2ilab export: error: could not write {args.output}: {exc}; nothing was left behind", file=sys.stderr)
        return 1
    print(f"wrote {out}; load it with diffusers: {LOADING.format(path=str(out))}")
    return 0
