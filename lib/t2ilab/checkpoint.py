"""Checkpoints: crash-safe folders in the diffusers/transformers layout, a manifest, and `latest`.

    checkpoint-epoch-0118/          (mid-epoch: checkpoint-epoch-0118-step-006200)
      unet/ unet_ema/ text_encoder/ tokenizer/ scheduler/   save_pretrained layouts (safetensors)
      vocabulary.json   words seen in training captions
      config.yaml       the resolved run config
      training_state/   optimizer.pt, lr_scheduler.pt, rng.pt (tensors only: loaded with weights_only=True),
                        state.json (epoch, step within epoch, EMA counters, LR-schedule segment)
      manifest.json     written last; complete=true marks a usable checkpoint

A checkpoint is written into `.tmp-<name>` and renamed into place only when complete, so a crash never
leaves a folder that `latest` would pick but cannot load.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
REQUIRED_PARTS = ("unet", "text_encoder", "tokenizer", "scheduler", "config.yaml")
_NAME = re.compile(r"^checkpoint-epoch-(\d+)(?:-step-(\d+))?$")


class CheckpointError(ValueError):
    """A checkpoint is missing, partial or from another model; the message says which and what to do."""


def checkpoint_name(epoch: int, step: int | None = None) -> str:
    """`checkpoint-epoch-0118` at an epoch end, `checkpoint-epoch-0118-step-006200` mid-epoch."""
    name = f"checkpoint-epoch-{epoch:04d}"
    return name if step is None else f"{name}-step-{step:06d}"


def read_manifest(path: str | Path) -> dict:
    """The manifest of a complete checkpoint, or a CheckpointError saying what is wrong."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a file; expected a checkpoint-epoch-N folder")
    mf = p / MANIFEST
    if not mf.is_file():
        raise CheckpointError(
            f"checkpoint {p} is partial (no {MANIFEST}; it was probably interrupted while being written). "
            f"Use an earlier checkpoint or --resume latest."
        )
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {p}: {MANIFEST} is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("complete") is not True:
        raise CheckpointError(f"checkpoint {p} is not marked complete in {MANIFEST}")
    missing = [part for part in REQUIRED_PARTS if not (p / part).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {p} is missing {', '.join(missing)}; it cannot be loaded")
    return manifest


def list_checkpoints(output_dir: str | Path) -> list[tuple[Path, dict]]:
    """Complete checkpoints in an output dir, oldest first (by global step)."""
    root = Path(output_dir)
    found = []
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and _NAME.match(child.name):
                try:
                    found.append((child, read_manifest(child)))
                except CheckpointError:
                    continue  # partial or broken: never chosen
    return sorted(found, key=lambda item: (item[1].get("global_step", 0), item[0].name))


def resolve_checkpoint(path: str | Path, output_dir: str | Path | None = None) -> Path:
    """Turn 'latest', an output dir or a checkpoint folder into a complete checkpoint folder."""
    text = str(path)
    if text == "latest" or (Path(text).is_dir() and not _NAME.match(Path(text).name) and not (Path(text) / MANIFEST).exists()):
        root = Path(output_dir) if text == "latest" else Path(text)
        if text == "latest" and output_dir is None:
            raise CheckpointError("'latest' needs an output dir to look in")
        ckpts = list_checkpoints(root)
        if not ckpts:
            raise CheckpointError(f"no complete checkpoint in {root}; train first or pass a checkpoint folder")
        return ckpts[-1][0]
    read_manifest(text)
    return Path(text)
