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
import os
import re
import shutil
import time
from pathlib import Path

from t2ilab.files import write_json

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


def checkpoint_key(name: str) -> tuple[int, int] | None:
    """(epoch, global step or -1) parsed from a checkpoint folder name, padded or not; None for other names."""
    m = _NAME.match(name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)) if m.group(2) else -1


def read_manifest(path: str | Path) -> dict:
    """The manifest of a complete checkpoint, or a CheckpointError saying what is wrong."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a file; expected a checkpoint-epoch-N folder")
    mf = p / MANIFEST
    if not mf.is_file():
        if not (p / "config.yaml").is_file() and ((p / "unet").is_dir() or (p / "model_index.json").is_file()):
            raise CheckpointError(
                f"{p} is not a t2ilab checkpoint: it holds diffusers parts but no {MANIFEST} or config.yaml "
                f"(another trainer's output?). t2ilab resumes and samples only its own checkpoint-epoch-N folders; "
                f"load this one with diffusers (UNet2DConditionModel.from_pretrained('{p / 'unet'}')), or train "
                f"a t2ilab run with ./run_train.sh --config configs/train_config.yaml."
            )
        raise CheckpointError(
            f"checkpoint {p} is partial (no {MANIFEST}; it was probably interrupted while being written or copied). "
            f"Use an earlier checkpoint or --resume latest."
        )
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {p}: {MANIFEST} is unreadable ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {p}: {MANIFEST} cannot be read ({exc.strerror})") from None
    if not isinstance(manifest, dict) or manifest.get("complete") is not True:
        raise CheckpointError(f"checkpoint {p} is not marked complete in {MANIFEST}")
    missing = [part for part in REQUIRED_PARTS if not (p / part).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {p} is missing {', '.join(missing)}; it cannot be loaded")
    return manifest


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """Every folder named like a checkpoint (complete or not), oldest first by (epoch, step) in the name."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [c for c in root.iterdir() if c.is_dir() and checkpoint_key(c.name) is not None]
    return sorted(found, key=lambda c: checkpoint_key(c.name))


def list_checkpoints(output_dir: str | Path) -> list[tuple[Path, dict]]:
    """Complete checkpoints in an output dir, oldest first (by global step)."""
    found = []
    for child in checkpoint_folders(output_dir):
        try:
            found.append((child, read_manifest(child)))
        except CheckpointError:
            continue  # partial or broken: never chosen
    return sorted(found, key=lambda item: (item[1].get("global_step", 0), item[0].name))


def _latest(root: Path) -> Path:
    """The newest checkpoint of an output dir; a damaged one newer than it is named, never skipped silently."""
    folders = checkpoint_folders(root)
    for folder in reversed(folders):
        try:
            read_manifest(folder)
        except CheckpointError as exc:
            older = [f.name for f in folders if checkpoint_key(f.name) < checkpoint_key(folder.name)]
            hint = (f"To continue from an older one, name it: --resume {root / older[-1]} --overwrite "
                    f"(discards {folder.name})" if older else "There is no older checkpoint to use instead")
            raise CheckpointError(
                f"the newest checkpoint in {root} is damaged, so 'latest' stops rather than skip it: {exc}. "
                f"Repair it or move it out of {root}. {hint}."
            ) from None
        return folder
    raise CheckpointError(f"no complete checkpoint in {root}; train first or pass a checkpoint folder")


def padded(path: Path) -> Path:
    """`checkpoint-epoch-118` -> the run's `checkpoint-epoch-0118` when only the padded one exists."""
    key = checkpoint_key(path.name)
    if path.exists() or key is None or not path.parent.is_dir():
        return path
    same = [c for c in checkpoint_folders(path.parent) if checkpoint_key(c.name) == key]
    return same[0] if same else path


def resolve_checkpoint(path: str | Path, output_dir: str | Path | None = None) -> Path:
    """Turn 'latest', an output dir or a checkpoint folder (padded or unpadded name) into a complete checkpoint."""
    text = str(path)
    if text == "latest":
        if output_dir is None:
            raise CheckpointError("'latest' needs an output dir to look in")
        return _latest(Path(output_dir))
    p = padded(Path(text))
    looks_like_parts = (p / "unet").is_dir() or (p / "model_index.json").is_file()
    if p.is_dir() and checkpoint_key(p.name) is None and not (p / MANIFEST).exists() and (
        checkpoint_folders(p) or not looks_like_parts
    ):
        return _latest(p)  # an output dir: its newest checkpoint
    read_manifest(p)
    return p


def later_checkpoints(output_dir: str | Path, checkpoint: Path) -> list[Path]:
    """Checkpoint folders of `output_dir` after `checkpoint` (by epoch and step): what resuming it would overwrite."""
    key = checkpoint_key(checkpoint.name)
    if key is None:
        return []
    return [c for c in checkpoint_folders(output_dir) if checkpoint_key(c.name) > key]


# ---------------------------------------------------------------- writing


def _estimate_bytes(modules: list) -> int:
    """Weights plus two AdamW moments for the trainable ones, in fp32."""
    total = 0
    for m in modules:
        if m is None:
            continue
        n = sum(p.numel() for p in m.parameters())
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        total += 4 * (n + 2 * trainable)
    return total


def check_free_space(output_dir: Path, needed_bytes: int, min_free_mb: int) -> None:
    """Refuse to start a checkpoint that cannot fit, before anything is written."""
    free = shutil.disk_usage(output_dir).free
    needed = needed_bytes + min_free_mb * 2**20
    if free < needed:
        raise CheckpointError(
            f"not enough disk space in {output_dir} for a checkpoint: {free / 2**20:.0f} MiB free, "
            f"need about {needed / 2**20:.0f} MiB (checkpoint + training.min_free_disk_mb). Free space or lower "
            f"training.checkpoints_total_limit; earlier checkpoints are intact."
        )


def write_checkpoint(output_dir: str | Path, name: str, write_parts, manifest: dict, modules: list, min_free_mb: int = 0) -> Path:
    """Write a checkpoint crash-safely: `write_parts(tmp_dir)` fills a temp folder, then it is renamed into place.

    The manifest (complete=true) is written last inside the temp folder; on any error the temp folder is
    removed and the previous checkpoints are untouched.
    """
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    check_free_space(root, _estimate_bytes(modules), min_free_mb)
    final = root / name
    tmp = root / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        write_parts(tmp)
        full_manifest = {"format": FORMAT_VERSION, **manifest, "complete": True, "written_at": time.time()}
        write_json(tmp / MANIFEST, full_manifest, durable=True)
        if final.exists():
            old = root / f".old-{name}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise CheckpointError(
                f"could not write checkpoint {final}: {exc}. Earlier checkpoints are intact; free disk space "
                f"and resume with --resume latest."
            ) from exc
        raise
    return final


def remove_stale_temporaries(output_dir: str | Path) -> list[str]:
    """Delete `.tmp-*` / `.old-*` folders left by a crash mid-write; returns their names."""
    root = Path(output_dir)
    removed = []
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and (child.name.startswith(".tmp-checkpoint") or child.name.startswith(".old-checkpoint")):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
    return removed


def rotate_checkpoints(output_dir: str | Path, limit: int | None, keep_epochs: set[int], keep: Path | None = None) -> list[Path]:
    """Keep `limit` rolling checkpoints (the newest, `keep` included) besides milestones, which are never deleted.

    Called only after a save succeeded, so a failed save never costs an older checkpoint.
    """
    if not limit:
        return []
    rolling = [p for p, m in list_checkpoints(output_dir) if not (m.get("end_of_epoch") and m.get("epoch") in keep_epochs)]
    deleted = []
    for p in rolling[: max(0, len(rolling) - limit)]:  # oldest first
        if keep is not None and p.resolve() == keep.resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)
        deleted.append(p)
    return deleted


# ---------------------------------------------------------------- parts


def quiet_hub_progress() -> None:
    """Silence the per-file "Writing model shards"/"Loading weights" bars of save/from_pretrained."""
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def save_model_parts(folder: Path, unet, ema, text_encoder, tokenizer, noise_scheduler, vocabulary: list[str], cfg) -> None:
    """Model parts in save_pretrained layouts (safetensors), so sampling needs no training code."""
    from t2ilab.config import save_config

    quiet_hub_progress()
    unet.save_pretrained(folder / "unet")
    if ema is not None:
        ema.save_pretrained(folder / "unet_ema")
    text_encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    noise_scheduler.save_pretrained(folder / "scheduler")
    (folder / "vocabulary.json").write_text(json.dumps(vocabulary), encoding="utf-8")
    save_config(cfg, folder / "config.yaml")


def save_training_state(folder: Path, optimizer_state: dict, lr_scheduler_state: dict, rng_state: dict, state: dict) -> None:
    """Optimizer, LR schedule and RNG states hold only tensors and numbers, so they load with weights_only=True."""
    import torch

    ts = folder / "training_state"
    ts.mkdir(parents=True, exist_ok=True)
    torch.save(optimizer_state, ts / "optimizer.pt")
    torch.save(lr_scheduler_state, ts / "lr_scheduler.pt")
    torch.save(rng_state, ts / "rng.pt")
    (ts / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")


def load_training_state(folder: str | Path) -> tuple[dict, dict, dict, dict]:
    """(optimizer, lr_scheduler, rng, state); refuses pickled objects (weights_only=True)."""
    import pickle

    import torch

    ts = Path(folder) / "training_state"
    out = []
    for name in ("optimizer.pt", "lr_scheduler.pt", "rng.pt"):
        path = ts / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder} has no training_state/{name}; it can be sampled from but not resumed")
        try:
            out.append(torch.load(path, map_location="cpu", weights_only=True))
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            raise CheckpointError(
                f"refusing to load {path}: it is not a plain tensor file ({str(exc).splitlines()[0]}). "
                f"t2ilab never unpickles arbitrary objects."
            ) from None
    try:
        state = json.loads((ts / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {folder}: training_state/state.json unreadable ({exc})") from None
    return out[0], out[1], out[2], state


def library_versions() -> dict[str, str]:
    """The versions a checkpoint records, so a later load can say what wrote it."""
    import accelerate
    import diffusers
    import torch
    import transformers

    from t2ilab import __version__

    return {"t2ilab": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__}
