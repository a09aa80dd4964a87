"""The training data: rendered shapes (t2ilab.datasets.shapes) or your own image folder, decoded once into a uint8
tensor with captions, a stable train/val split (a hash per sample, so growing the data set never moves a trained
image into validation) and an on-disk cache keyed by a fingerprint.
`t2ilab preview` draws a captioned grid of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from t2ilab import image_grids
from t2ilab.config import ConfigError, DataConfig, load_config
from t2ilab.datasets import folder
from t2ilab.datasets.data_errors import DataError, DataWarning

FORMAT_VERSION = 2  # bump when rendering, decoding or the cache layout changes: old caches are then ignored
IMAGES_FILE = "images.safetensors"
META_FILE = "meta.json"



@dataclass
class ImageCaptionSet:
    images: torch.Tensor  # uint8 (N, 3, H, W), pre-decoded so epochs never touch PIL
    captions: list[str]
    specs: list[dict | None]  # structured shape specs (None for folder data)
    train_idx: np.ndarray  # int64 indices, disjoint from val_idx
    val_idx: np.ndarray  # held out: never enters training
    fingerprint: str  # hash of everything that determines the content
    ids: list[str]  # each sample's identity, which decides its split: its index (shapes) or file name (folder)
    source: str  # "shapes" | "folder"
    skipped: dict[str, int]  # folder source: counts of skipped files by reason
    from_cache: bool = False  # True when read from data.cache_dir instead of rendered/decoded

    def __len__(self) -> int:
        return len(self.captions)


def data_fingerprint(data_cfg: DataConfig) -> str:
    """Short hash of what determines the content (not val_fraction or cache_dir: the split comes after)."""
    return _fingerprint(data_cfg, _folder_listing(data_cfg))


def load_dataset(data_cfg: DataConfig) -> ImageCaptionSet:
    """Render or decode the configured data set, or read it from the cache; then split train/val."""
    listing = _folder_listing(data_cfg)
    fingerprint = _fingerprint(data_cfg, listing)
    cache = Path(data_cfg.cache_dir) / fingerprint
    content = _read_cache(cache, fingerprint)
    from_cache = content is not None
    if content is None:
        content = _build(data_cfg, listing)
        _write_cache(cache, fingerprint, content)
    images, meta = content
    if meta.get("summary"):
        warnings.warn(meta["summary"], DataWarning, stacklevel=2)
    train_idx, val_idx = split_ids(meta["ids"], data_cfg.val_fraction, data_cfg.seed)
    return ImageCaptionSet(
        images=images,
        captions=meta["captions"],
        specs=meta["specs"],
        train_idx=train_idx,
        val_idx=val_idx,
        fingerprint=fingerprint,
        ids=meta["ids"],
        source=meta["source"],
        skipped=meta["skipped"],
        from_cache=from_cache,
    )


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) sorted int64 indices for samples identified by their index 0..n-1 (the shapes data set)."""
    return split_ids([str(i) for i in range(n)], val_fraction, seed)


def split_ids(ids: list[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) sorted int64 indices: a sample is held out when hash(seed, its id) < val_fraction."""
    # Each sample's side depends only on (seed, id), never on how many others there are: growing or shrinking the
    # data set moves no image across the split. A permutation of all n (the old rule) moved ~half of them.
    n = len(ids)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"split_ids needs 0 <= val_fraction < 1, got {val_fraction=}")
    u = split_hash(ids, seed)
    is_val = u < val_fraction
    if val_fraction > 0 and n >= 2 and not is_val.any():
        # Tiny sets only: a validation loss needs an image; the one with the smallest hash is as stable as it gets.
        is_val[np.argmin(u)] = True
    if n >= 2 and is_val.all():
        is_val[np.argmax(u)] = False  # training needs one too
    index = np.arange(n, dtype=np.int64)
    return index[~is_val], index[is_val]


def split_hash(ids: list[str], seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per id, from sha256 of (seed, id): the quantity the split compares."""
    values = [int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") for i in ids]
    return np.asarray(values, dtype=np.float64) / 2.0**64


def dataset_ids(data_cfg: DataConfig, fingerprint: str) -> list[str] | None:
    """The sample ids of the data set a checkpoint was trained on (its data config and fingerprint), or None."""
    if data_cfg.source == "shapes":
        return [str(i) for i in range(data_cfg.num_samples)]
    try:  # a folder's ids are in its data cache, if that is still there
        meta = json.loads((Path(data_cfg.cache_dir) / fingerprint / META_FILE).read_text(encoding="utf-8"))
        return list(meta["ids"])
    except (OSError, ValueError, KeyError):
        return None


def split_change(old_ids: list[str] | None, new: ImageCaptionSet, val_fraction: float, seed: int) -> str:
    """One line for the resume plan: how many images were added or removed and on which side they went."""
    if old_ids is None:
        return (f"data split: {len(new.train_idx)} train / {len(new.val_idx)} val; the previous data set's file list "
                f"is not in the data cache, so which images are new is not known (each image's side is fixed by "
                f"its name, so no image changed side)")
    old_set, new_pos = set(old_ids), {name: i for i, name in enumerate(new.ids)}
    val = set(new.val_idx.tolist())
    added = [i for name, i in new_pos.items() if name not in old_set]
    added_val = sum(1 for i in added if i in val)
    removed = [name for name in old_ids if name not in new_pos]
    _, old_val = split_ids(list(old_ids), val_fraction, seed)
    old_val_ids = {old_ids[i] for i in old_val}
    removed_val = sum(1 for name in removed if name in old_val_ids)
    moved = sum(1 for name, i in new_pos.items() if name in old_set and (i in val) != (name in old_val_ids))
    line = (f"data split: +{len(added)} images ({len(added) - added_val} to train, {added_val} to val), "
            f"-{len(removed)} ({len(removed) - removed_val} from train, {removed_val} from val); now "
            f"{len(new.train_idx)} train / {len(new.val_idx)} val")
    if moved:
        line += f"; {moved} kept images changed side (data.seed or data.val_fraction changed)"
    return line


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 -1..1, the range the diffusion model is trained in."""
    return images_uint8.to(torch.float32) / 127.5 - 1.0


def _folder_listing(data_cfg: DataConfig) -> list[tuple[str, int, int]] | None:
    if data_cfg.source != "folder":
        return None
    return folder.list_files(str(data_cfg.path), exclude=Path(data_cfg.cache_dir))


def _fingerprint(data_cfg: DataConfig, listing: list[tuple[str, int, int]] | None) -> str:
    fields: dict = {
        "format_version": FORMAT_VERSION,
        "source": data_cfg.source,
        "num_samples": data_cfg.num_samples,
        "resolution": data_cfg.resolution,
    }
    if data_cfg.source == "shapes":
        fields.update(seed=data_cfg.seed, category_mix=dict(sorted(data_cfg.category_mix.items())))
    else:
        # Names, sizes and mtimes: adding, removing or editing an image or caption invalidates the cache.
        fields.update(path=str(Path(str(data_cfg.path)).expanduser().resolve()), files=listing)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _build(data_cfg: DataConfig, listing: list[tuple[str, int, int]] | None) -> tuple[torch.Tensor, dict]:
    """Render shapes or decode the folder: (uint8 (N, 3, H, W) images, meta without the checksum)."""
    n, res = data_cfg.num_samples, data_cfg.resolution
    if data_cfg.source == "shapes":
        from t2ilab.datasets import shapes  # looked up at call time so tests can wrap render_shapes_dataset

        pixels, captions, specs = shapes.render_shapes_dataset(n, res, data_cfg.seed, dict(data_cfg.category_mix))
        assert pixels.shape == (n, res, res, 3) and pixels.dtype == np.uint8, (
            f"render_shapes_dataset returned {pixels.dtype} {pixels.shape}, expected uint8 {(n, res, res, 3)}"
        )
        meta = {"source": "shapes", "captions": list(captions), "specs": list(specs), "skipped": {}, "summary": None,
                "ids": [str(i) for i in range(n)]}
    else:
        found = folder.load_folder(str(data_cfg.path), listing or [], res, n)
        pixels = found.images
        meta = {
            "source": "folder",
            "captions": found.captions,
            "ids": found.names,
            "specs": [None] * len(found.captions),
            "skipped": found.skipped,
            "summary": found.summary,
        }
    images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()
    return images, meta


def _checksum(images: torch.Tensor) -> str:
    return hashlib.sha256(images.numpy().tobytes()).hexdigest()


def _read_cache(cache: Path, fingerprint: str) -> tuple[torch.Tensor, dict] | None:
    """The cached content, or None when absent; a damaged cache is reported and ignored (then rebuilt)."""
    if not cache.exists():
        return None
    try:
        meta = json.loads((cache / META_FILE).read_text(encoding="utf-8"))
        images = load_file(str(cache / IMAGES_FILE))["images"]
        n = len(meta["captions"])
        if meta["format_version"] != FORMAT_VERSION or meta["fingerprint"] != fingerprint:
            raise ValueError("written by another version")
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[:2] != (n, 3) or len(meta["specs"]) != n or len(meta["ids"]) != n:
            raise ValueError(f"images {tuple(images.shape)} do not match {n} captions")
        if _checksum(images) != meta["images_sha256"]:
            raise ValueError("image bytes do not match their checksum")
    except Exception as exc:  # any damage (truncated file, bad JSON, missing key) means: rebuild
        warnings.warn(f"ignoring damaged data cache {cache} ({exc}); rebuilding it", DataWarning, stacklevel=3)
        return None
    return images, meta


def _write_cache(cache: Path, fingerprint: str, content: tuple[torch.Tensor, dict]) -> None:
    """Write into a temporary folder and rename it into place, so a crash never leaves a half cache."""
    images, meta = content
    meta = {**meta, "fingerprint": fingerprint, "format_version": FORMAT_VERSION, "images_sha256": _checksum(images)}
    tmp: Path | None = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{cache.name}-", dir=cache.parent))
        save_file({"images": images}, str(tmp / IMAGES_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        if cache.exists():  # the damaged cache just ignored: move it aside atomically, then delete
            trash = Path(tempfile.mkdtemp(prefix=f".trash-{cache.name}-", dir=cache.parent))
            os.replace(cache, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, cache)
        except OSError:
            if not cache.exists():
                raise
            # Another process (e.g. another rank of `accelerate launch`) wrote the same content first.
    except OSError as exc:
        message = f"could not write the data cache {cache} ({exc}); continuing without it"
        warnings.warn(message, DataWarning, stacklevel=3)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --- preview --------------------------------------------------------------------------------------------

CAPTION_LINES = 3  # caption lines under each image; longer captions end in "..."
MIN_CELL_WIDTH = 96  # small images are centered in a wider cell so captions stay readable
GUTTER = image_grids.GUTTER


def preview_grid(ds: ImageCaptionSet, n: int = 32, cols: int = 8, scale: int = 3) -> Image.Image:
    """The first n images upscaled `scale`x (NEAREST), each with its caption underneath, `cols` per row."""
    count = min(n, len(ds))
    side = ds.images.shape[-1] * scale
    width = max(side, MIN_CELL_WIDTH)
    captions = [image_grids.wrap(ds.captions[i], width - 2, CAPTION_LINES) for i in range(count)]
    return image_grids.captioned_grid([ds.images[i] for i in range(count)], captions, cols, side,
                                      min_cell_width=MIN_CELL_WIDTH, label_lines=CAPTION_LINES)


def main(argv: list[str]) -> int:
    """`t2ilab preview`: write a captioned grid of the configured data set and say what was loaded."""
    parser = argparse.ArgumentParser(prog="t2ilab preview", description="Draw a captioned grid of the data set.")
    parser.add_argument("--config", help="YAML run config, e.g. configs/demo.yaml (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set data.resolution=64 (repeatable)")
    parser.add_argument("--out", help="PNG to write (default: <output_dir>/data_preview.png)")
    parser.add_argument("-n", type=int, default=32, help="number of images in the grid (default 32)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: argparse has already printed why
        return int(exc.code or 0)
    if args.n < 1:
        print(f"t2ilab preview: -n must be >= 1, got {args.n}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            ds = load_dataset(cfg.data)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        out = Path(args.out) if args.out else Path(cfg.output_dir) / "data_preview.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        preview_grid(ds, n=args.n).save(out)
    except (ConfigError, DataError) as exc:
        print(f"t2ilab preview: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"t2ilab preview: cannot write the preview ({exc})", file=sys.stderr)
        return 2
    res = ds.images.shape[-1]
    print(f"wrote {out}")
    print(f"data: {ds.source}, {len(ds.train_idx)} train / {len(ds.val_idx)} val images at {res}x{res}")
    print(f"fingerprint {ds.fingerprint}, cache {'hit' if ds.from_cache else 'miss (written)'}: "
          f"{Path(cfg.data.cache_dir) / ds.fingerprint}")
    return 0
