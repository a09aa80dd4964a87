"""`t2ilab export CHECKPOINT OUTPUT [--weights ema|raw]`: a checkpoint as a folder that plain diffusers loads.

Pixel mode writes unet/ text_encoder/ tokenizer/ scheduler/ and pipeline_t2ilab.py, which model_index.json names,
so `DiffusionPipeline.from_pretrained(OUTPUT, trust_remote_code=True)` loads it without t2ilab installed. Latent mode
(model.vae) writes a StableDiffusionPipeline folder (the VAE's weights copied in): plain `from_pretrained(OUTPUT)`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from t2ilab.config import ConfigError, load_config
from t2ilab.paths import caller_path
from t2ilab.sampling.export_pipeline import pipeline_t2ilab
from t2ilab.sampling.pipeline import METADATA_FILE, load_pipeline
from t2ilab.training.checkpoint import CheckpointError, quiet_hub_progress, resolve_checkpoint
from t2ilab.training.representation import space_name

PIPELINE_FILE = Path(pipeline_t2ilab.__file__)  # a module of a subpackage, so every wheel carries it
PIPELINE_CLASS = [PIPELINE_FILE.stem, pipeline_t2ilab.T2ILabPipeline.__name__]  # model_index.json _class_name
LOADING = "DiffusionPipeline.from_pretrained({path!r}, trust_remote_code=True)"
LOADING_LATENT = ("DiffusionPipeline.from_pretrained({path!r}) (a StableDiffusionPipeline; pass this run's "
                  "num_inference_steps={steps} and guidance_scale={guidance}, SD's defaults are 50 and 7.5)")


class ExportError(ValueError):
    """The export cannot be written as asked; the message says why and what to do."""


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
    space = space_name(cfg)
    if space != "pixels" and (cfg.noise.objective != "diffusion" or cfg.model.coord_channels):
        what = "noise.objective: flow_matching" if cfg.noise.objective != "diffusion" else "model.coord_channels: true"
        raise ExportError(
            f"checkpoint {path} was trained in latent space with {what}, which StableDiffusionPipeline cannot sample; "
            f"sample it with t2ilab (t2ilab sample --checkpoint {path})"
        )

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
        "weights": source.weights, "image_space": "pixels", "scheduler": cfg.sampling.scheduler,
        "load_with": loading(cfg, "<this folder>"),
    }
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def write_latent_layout(path: Path, cfg, weights: str, folder: Path) -> None:
    """The StableDiffusionPipeline layout: vae, unet, text_encoder, tokenizer, scheduler, no safety checker."""
    from diffusers import StableDiffusionPipeline

    source = load_pipeline(path, weights=weights, scheduler=cfg.sampling.scheduler, device="cpu")
    shift = getattr(source.vae.config, "shift_factor", None)
    if shift:  # StableDiffusionPipeline decodes latents / scaling_factor and never adds a shift back
        raise ExportError(
            f"checkpoint {path}: its VAE ({cfg.model.vae}) has shift_factor={shift}, which StableDiffusionPipeline "
            f"ignores, so its images would be wrong; this VAE's checkpoints cannot be exported as Stable Diffusion"
        )
    # SD passes the attention mask only when the encoder's config asks for it; t2ilab always passes it.
    source.text_encoder.config.use_attention_mask = True
    # SD pads prompts to model_max_length: the caption length the UNet was trained on, as t2ilab samples.
    source.tokenizer.model_max_length = source.max_prompt_tokens
    pipe = StableDiffusionPipeline(
        vae=source.vae, text_encoder=source.text_encoder, tokenizer=source.tokenizer, unet=source.unet,
        scheduler=source.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    quiet_hub_progress()
    pipe.save_pretrained(folder)
    meta = {
        "vocabulary": source.vocabulary, "checkpoint_path": str(path), "manifest": source.manifest,
        "weights": source.weights, "image_space": "latents", "scheduler": cfg.sampling.scheduler,
        "num_inference_steps": cfg.sampling.num_inference_steps, "guidance_scale": cfg.sampling.guidance_scale,
        "load_with": loading(cfg, "<this folder>"),
    }
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def loading(cfg, path: str) -> str:
    """How diffusers loads an export of this run."""
    if space_name(cfg) == "latents":
        return LOADING_LATENT.format(path=path, steps=cfg.sampling.num_inference_steps, guidance=cfg.sampling.guidance_scale)
    return LOADING.format(path=path)


# image space -> writer(checkpoint, cfg, weights, folder).
LAYOUTS = {"pixels": write_pixel_layout, "latents": write_latent_layout}


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
    how = json.loads((out / METADATA_FILE).read_text(encoding="utf-8"))["load_with"]
    print(f"wrote {out}; load it with diffusers: {how.replace(repr('<this folder>'), repr(str(out)))}")
    return 0
