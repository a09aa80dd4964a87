"""Your own images as a data set: scan a folder, pair images with captions (metadata.jsonl or <image>.txt),
decode each to an RGB square. Bad files are skipped and counted by reason; the folder is only ever read.
"""

from __future__ import annotations

import json
import os
import posixpath
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from t2ilab.datasets.data_errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
METADATA = "metadata.jsonl"  # Hugging Face imagefolder convention: {"file_name": "a.png", "text": "..."} per line
MIN_SIDE = 8  # smaller images carry too little to learn from (icons, thumbnails, spacer GIFs)
# Longer captions are skipped: the encoder reads its first model.max_caption_tokens words anyway, and a
# multi-megabyte "caption" (a log pasted into a .txt) is a mistake, not a description.
MAX_CAPTION_CHARS = 2000

# skip reason -> how the summary warning says it
REASONS = {
    "unreadable": "unreadable",
    "too_large": "too large to decode safely",
    "too_small": f"smaller than {MIN_SIDE} px",
    "no_caption": "without caption",
    "empty_caption": "with an empty caption",
    "bad_caption": "with a caption that is not UTF-8 text",
    "long_caption": f"with a caption longer than {MAX_CAPTION_CHARS} characters",
    "not_regular": "not a regular file (a FIFO, socket or device)",
    "non_image": "non-image file",
    "missing_image": "metadata.jsonl entry without image",
}
PLURALS = {"non_image": "non-image files", "missing_image": "metadata.jsonl entries without image",
           "not_regular": "not regular files (FIFOs, sockets or devices)"}
CAPTION_HELP = (
    'captions come from metadata.jsonl lines like {"file_name": "cat.png", "text": "a cat"} '
    "or from cat.txt next to cat.png"
)

# (path relative to the folder in POSIX form, size in bytes, mtime in ns): what the fingerprint sees
Listing = list[tuple[str, int, int]]


@dataclass
class FolderData:
    images: np.ndarray  # uint8 (N, H, W, 3)
    captions: list[str]
    names: list[str]  # each image's path relative to the folder (POSIX): its identity for the train/val split
    skipped: dict[str, int]  # reason -> count
    summary: str | None  # the one warning to show, or None when nothing was skipped


def list_files(path: str, exclude: Path | None = None) -> Listing:
    """Every non-hidden file under `path` (sorted) with size and mtime; DataError if it is not a folder."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data.path={path!r} does not exist; point it at a folder of images ({CAPTION_HELP})")
    if not root.is_dir():
        raise DataError(f"data.path={path!r} is a file, not a folder; point it at the folder that holds the images")
    excluded = exclude.resolve() if exclude is not None else None
    listing: Listing = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Hidden entries (.DS_Store, .ipynb_checkpoints, a cache inside the folder) are not data.
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and Path(dirpath, d).resolve() != excluded]
        for name in filenames:
            if name.startswith("."):
                continue
            full = Path(dirpath, name)
            try:
                st = full.stat()
            except OSError:  # a dangling symlink
                continue
            listing.append((full.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    listing.sort()
    return listing


def _captioned_candidates(root: Path, files: list[str], path: str,
                          skipped: dict[str, list[str]]) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(regular files, image files, (image, caption) pairs) of a listing; what is not data goes into `skipped`."""
    # Opening a FIFO or a device blocks or never ends: only regular files are read, whatever their name.
    irregular = [rel for rel in files if not (root / rel).is_file()]
    if irregular:
        skipped["not_regular"] = irregular
        files = [rel for rel in files if rel not in set(irregular)]
    images = [rel for rel in files if Path(rel).suffix.lower() in IMAGE_EXTENSIONS]

    metadata = _read_metadata(root, [rel for rel in files if posixpath.basename(rel) == METADATA], path)
    image_set = set(images)
    file_set = set(files)
    for rel in metadata:
        if rel not in file_set:
            skipped.setdefault("missing_image", []).append(rel)
    # A .txt is a sidecar when an image with the same stem sits next to it; any other file is not data.
    stems = {posixpath.splitext(rel)[0] for rel in images}
    sidecars: dict[str, str] = {}  # image path without extension -> its .txt
    for rel in files:
        stem, ext = posixpath.splitext(rel)
        if ext.lower() == ".txt" and stem in stems:
            sidecars[stem] = rel
        elif rel not in image_set and posixpath.basename(rel) != METADATA:
            skipped.setdefault("non_image", []).append(rel)

    candidates: list[tuple[str, str]] = []
    for rel in images:
        caption, reason = _caption_for(root, rel, metadata, sidecars)
        if reason:
            skipped.setdefault(reason, []).append(rel)
        else:
            candidates.append((rel, caption))
    return files, images, candidates


def load_folder(path: str, listing: Listing, resolution: int, num_samples: int) -> FolderData:
    """Decode up to `num_samples` captioned images (sorted file order) to uint8 squares of `resolution`."""
    root = Path(path).expanduser()
    files = [rel for rel, _, _ in listing]
    if not files:
        raise DataError(f"data.path={path!r} is an empty folder; put your images there ({CAPTION_HELP})")
    skipped: dict[str, list[str]] = {}
    files, images, candidates = _captioned_candidates(root, files, path, skipped)

    out = np.empty((min(len(candidates), num_samples), resolution, resolution, 3), dtype=np.uint8)
    captions: list[str] = []
    names: list[str] = []
    for rel, caption in candidates:
        if len(captions) == num_samples:
            break
        pixels, reason = decode_image(root / rel, resolution)
        if reason:
            skipped.setdefault(reason, []).append(rel)
            continue
        out[len(captions)] = pixels
        captions.append(caption)
        names.append(rel)

    if not captions:
        found = ", ".join(_describe(reason, names) for reason, names in skipped.items()) or "nothing"
        raise DataError(
            f"data.path={path!r}: no usable images; found {len(images)} image file(s) "
            f"({' '.join(IMAGE_EXTENSIONS)}) among {len(files)} file(s): {found}; {CAPTION_HELP}"
        )
    summary = None
    if skipped:
        capped = len(captions) == num_samples and num_samples < len(images)
        cap = f" (data.num_samples={num_samples})" if capped else ""
        summary = (
            f"data.path={path!r}: using {len(captions)} of {len(images)} images{cap}; skipped "
            + ", ".join(_describe(reason, names) for reason, names in skipped.items())
        )
    counts = {reason: len(names) for reason, names in skipped.items()}
    return FolderData(out[: len(captions)], captions, names, counts, summary)


def decode_image(path: Path, resolution: int) -> tuple[np.ndarray | None, str | None]:
    """(uint8 (H, W, 3) array, None) or (None, skip reason): EXIF-upright RGB, shorter side resized, center crop."""
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse both instead of eating the memory.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                # JPEG only: decode at 1/2..1/8 scale while both sides stay >= resolution (big photos load fast).
                im.draft(None, (resolution, resolution))
                im.load()
                im = ImageOps.exif_transpose(im)
                if min(im.size) < MIN_SIDE:
                    return None, "too_small"
                rgb = to_rgb(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return None, "too_large"
        except Exception:  # PIL raises OSError, ValueError, SyntaxError, struct.error... on broken files
            return None, "unreadable"
    w, h = rgb.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    # Resizing only the centered square = shorter side to `resolution`, then center crop, in one step.
    square = rgb.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    return np.asarray(square, dtype=np.uint8), None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: transparency composited on white, 16-bit and float scaled to 0..255."""
    if im.mode.startswith("I;16"):
        values = np.asarray(im).astype(np.float64) / 257.0  # 65535 -> 255
        return _gray_to_rgb(values)
    if im.mode == "I":
        values = np.asarray(im).astype(np.float64)
        # 32-bit int images are almost always 16-bit data (PNG, TIFF) in a wider container.
        return _gray_to_rgb(values / 257.0 if values.max() > 255 else values)
    if im.mode == "F":
        values = np.asarray(im).astype(np.float64)
        return _gray_to_rgb(values * 255.0 if values.max() <= 1.0 else values)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return im.convert("RGB")


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _read_metadata(root: Path, metadata_files: list[str], path: str) -> dict[str, str | None]:
    """Image path (relative to the folder) -> caption from every metadata.jsonl; None when "text" is missing."""
    captions: dict[str, str | None] = {}
    for meta_rel in metadata_files:
        base = posixpath.dirname(meta_rel)
        try:
            lines = (root / meta_rel).read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"data.path={path!r}: cannot read {meta_rel} as UTF-8 text ({exc})") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
                raise DataError(
                    f"data.path={path!r}: {meta_rel} line {number} is not a JSON object with a 'file_name' "
                    f"string: {line[:80]!r}; fix or remove that line ({CAPTION_HELP})"
                )
            rel = posixpath.normpath(posixpath.join(base, entry["file_name"].replace("\\", "/")))
            text = entry.get("text")
            captions[rel] = text if isinstance(text, str) else None
    return captions


def _caption_for(
    root: Path, rel: str, metadata: dict[str, str | None], sidecars: dict[str, str]
) -> tuple[str, str | None]:
    """(caption, None) or ("", skip reason); a metadata.jsonl entry wins over a .txt sidecar."""
    if rel in metadata:
        text = metadata[rel]
    else:
        text = None
        sidecar = sidecars.get(posixpath.splitext(rel)[0])
        if sidecar is not None:
            if (root / sidecar).stat().st_size > 4 * MAX_CAPTION_CHARS:  # UTF-8: at most 4 bytes a character
                return "", "long_caption"
            try:
                text = (root / sidecar).read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError):
                return "", "bad_caption"
    if text is None:
        return "", "no_caption"
    text = text.strip()
    if len(text) > MAX_CAPTION_CHARS:
        return "", "long_caption"
    return (text, None) if text else ("", "empty_caption")


def _describe(reason: str, names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    label = REASONS[reason] if len(names) == 1 else PLURALS.get(reason, REASONS[reason])
    return f"{len(names)} {label} ({shown})"
