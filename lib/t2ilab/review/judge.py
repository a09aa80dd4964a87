"""GenEval-style exact judge for shapes images: palette pixel classes, connected components, shape templates.

Analytic, deterministic, no training and no downloads; `judge_ceiling` is its score on real renders.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from t2ilab.config import CATEGORIES
from t2ilab.datasets.shapes import (
    BACKGROUND,
    CENTROID_DOWN,
    COLORS,
    SIZE_SPLIT,
    relation_offsets,
    render_shapes_dataset,
)
from t2ilab.intervals import Z as _Z  # noqa: F401  (wilson_interval re-exported)
from t2ilab.intervals import wilson_interval

_BACKGROUND = np.array(BACKGROUND, dtype=np.float32)
_COLOR_VECTORS = np.array(list(COLORS.values()), dtype=np.float32) - _BACKGROUND  # palette, from the background
_COLOR_NAMES = [None, *COLORS]  # pixel class 0 is the background
MIN_COVERAGE = 0.5  # a pixel is an object pixel when at least half of it is covered (projection onto its colour)
MAX_HUE_ANGLE = 20.0  # degrees from a pixel's offset (from the background) to its colour; palette angles >= 24
MIN_AREA = 0.006  # blobs smaller than this fraction of the image are noise (a small triangle is ~0.015)
MIN_TEMPLATE_IOU = 0.7  # below this the blob is an object of unknown shape (it still counts as an object)
# The skills count a blob as an object only when it is isolated: at least MIN_ISOLATION of its ring is background
# or a blend of its own colour (ISOLATION_RESIDUAL: distance allowed, as a share of the colour's norm). Measured
# (judge_calibration): >= 99.5% of the objects of renders with added noise of sd 60 pass, 96% at sd 80 (32 px),
# and <= 0.4% of the speckle blobs of uniform noise; 0.25 dropped a third of the sd-60 objects that the strict
# verdict still accepted, so skills scored below `correct`.
ISOLATION_RESIDUAL = 0.45
MIN_ISOLATION = 0.5
MAX_SIDE = 0.5  # blobs wider than this fraction of the image are not objects of the data set
RELATION_MIN_OFFSET = 0.1  # "A above B": B's centroid at least this fraction of the side lower, and the offset dominant


def to_uint8_image(image) -> np.ndarray:
    """An (H, W, 3) uint8 array from a uint8 array, a PIL image, or a float tensor (3, H, W) in [-1, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):  # a torch tensor: the model's output range [-1, 1], channels first
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a tensor of shape (3, H, W) in [-1, 1], got {tuple(image.shape)}")
        array = image.detach().float().cpu().clamp(-1, 1).permute(1, 2, 0).numpy()
        return np.round((array + 1) * 127.5).astype(np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {array.dtype} {array.shape}; "
                         "pass floats as a (3, H, W) torch tensor in [-1, 1]")
    return array


# Side of each shape's box from its area: circle pi/4 s^2, square s^2, triangle s^2/2.
_AREA_FACTOR = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}


def _coverage(shape: str, x0: float, y0: float, side: float, height: int, width: int, samples: int = 4) -> np.ndarray:
    """Fraction of each pixel of a height x width window covered by the shape whose box is (x0, y0, side)."""
    offsets = (np.arange(samples) + 0.5) / samples
    v = (((np.arange(height)[:, None] + offsets).ravel() - y0) / side)[:, None]
    u = (((np.arange(width)[:, None] + offsets).ravel() - x0) / side)[None, :]
    if shape == "circle":
        inside = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif shape == "square":
        inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    else:
        inside = (np.abs(u - 0.5) <= 0.5 * v) & (v <= 1)
    return inside.reshape(height, samples, width, samples).mean(axis=(1, 3))


def _fit_shape(alpha: np.ndarray) -> tuple[str | None, float, float]:
    """(shape, side, soft IoU): each shape is sized by the blob's area and centred on its centroid; the best wins."""
    area = alpha.sum()
    ys, xs = np.indices(alpha.shape) + 0.5
    cx, cy = (alpha * xs).sum() / area, (alpha * ys).sum() / area
    best, best_iou, best_side = None, 0.0, 0.0
    for shape, factor in _AREA_FACTOR.items():
        side = math.sqrt(area / factor)
        ideal = _coverage(shape, cx - side / 2, cy - CENTROID_DOWN[shape] * side, side, *alpha.shape)
        iou = float(np.minimum(alpha, ideal).sum() / np.maximum(alpha, ideal).sum())
        if iou > best_iou:
            best, best_iou, best_side = shape, iou, side
    return (best if best_iou >= MIN_TEMPLATE_IOU else None), best_side, best_iou


def _classify_pixels(pixels: np.ndarray) -> np.ndarray:
    """Per pixel: 0 for background, else 1 + the index of its palette colour."""
    # On the plain background an antialiased edge pixel is alpha * colour: classify by direction (hue), which
    # alpha does not change, and call a pixel an object pixel when its projection says it is mostly covered.
    offsets = pixels - _BACKGROUND
    dots = offsets @ _COLOR_VECTORS.T
    cosines = dots / (np.linalg.norm(offsets, axis=-1, keepdims=True) * np.linalg.norm(_COLOR_VECTORS, axis=-1) + 1e-6)
    best = cosines.argmax(-1)
    coverage = np.take_along_axis(dots, best[..., None], -1)[..., 0] / (_COLOR_VECTORS**2).sum(-1)[best]
    is_object = (coverage >= MIN_COVERAGE) & (cosines.max(-1) >= math.cos(math.radians(MAX_HUE_ANGLE)))
    return np.where(is_object, best + 1, 0)


def find_objects(image) -> list[dict]:
    """Objects in an image: dicts with shape (None if unrecognised), color, size, side, cx, cy, area, iou, isolation."""
    # Long on purpose (~65 lines): one pass per colour blob that measures every attribute the calibrated thresholds
    # read; split, the window / ring / mask arithmetic would be passed between helpers and be harder to check.
    pixels = to_uint8_image(image).astype(np.float32)
    height, width = pixels.shape[:2]
    longest = max(height, width)
    classes = _classify_pixels(pixels)
    # The background level where the image has one (a generated image may be a little off black).
    background = np.median(pixels[classes == 0], axis=0) if (classes == 0).any() else _BACKGROUND
    eight_connected = np.ones((3, 3), dtype=bool)  # thin triangle tips stay attached to their body
    blob_ids = np.zeros(classes.shape, dtype=np.int32)  # 1 + index into objects, to find touching blobs
    objects, rings = [], []
    for color_index in np.unique(classes):
        if color_index == 0:
            continue
        components, _ = ndimage.label(classes == color_index, structure=eight_connected)
        for label, box in enumerate(ndimage.find_objects(components), start=1):
            if (components[box] == label).sum() < max(3.0, MIN_AREA * height * width):
                continue
            # Work in a window two pixels around the blob; its one-pixel ring of antialiased edge pixels counts too.
            y0, x0 = max(0, box[0].start - 2), max(0, box[1].start - 2)
            y1, x1 = min(height, box[0].stop + 2), min(width, box[1].stop + 2)
            own = components[y0:y1, x0:x1] == label
            near = ndimage.binary_dilation(own, structure=eight_connected)
            # Coverage = projection onto the blob's own colour: its palette colour scaled so the blob's 80th
            # percentile pixel is fully covered (a generated object may be a little darker or brighter).
            color = _COLOR_VECTORS[color_index - 1] + _BACKGROUND - background
            alpha = ((pixels[y0:y1, x0:x1] - background) @ color) / (color @ color)
            alpha = np.clip(alpha / max(float(np.percentile(alpha[own], 80)), 0.5), 0.0, 1.0) * near
            if alpha.sum() <= 0:  # only possible on a strange background estimate; nothing to measure
                continue
            shape, side, iou = _fit_shape(alpha)
            # Isolation: the share of the ring around the blob that is background or a blend of the blob's own
            # colour with it, as around a drawn object; speckle in noise is ringed by other colours.
            ring = near & ~own
            offsets = pixels[y0:y1, x0:x1][ring] - background
            blend = np.clip((offsets @ color) / (color @ color), 0.0, 1.0)[:, None] * color
            residual = np.linalg.norm(offsets - blend, axis=-1) / np.linalg.norm(color)
            isolation = float((residual <= ISOLATION_RESIDUAL).mean()) if ring.any() else 1.0
            # Real objects lie fully inside the image and are at most 0.4 of its side: a blob that touches the
            # border or is larger (a tinted background, a cut-off object) counts as an object of unknown shape.
            touches_border = box[0].start == 0 or box[1].start == 0 or box[0].stop == height or box[1].stop == width
            if touches_border or side > MAX_SIDE * longest:
                shape = None
            ys, xs = np.indices(alpha.shape) + 0.5
            area = float(alpha.sum())
            objects.append({
                "shape": shape,
                "color": _COLOR_NAMES[color_index],
                "size": "large" if side > SIZE_SPLIT * longest else "small",
                "side": side,
                "cx": float((alpha * xs).sum() / area + x0),
                "cy": float((alpha * ys).sum() / area + y0),
                "area": area,
                "iou": iou,
                "isolation": isolation,
            })
            blob_ids[y0:y1, x0:x1][own] = len(objects)
            rings.append((slice(y0, y1), slice(x0, x1), near & ~own))
    # A colour fringe along an object's edge (an unrecognised blob touching a larger recognised object) is
    # part of that object, not another one. Rendered objects never touch, so this only forgives fringes.
    keep = []
    for index, (obj, (rows, cols, ring)) in enumerate(zip(objects, rings)):
        neighbours = {int(i) - 1 for i in np.unique(blob_ids[rows, cols][ring]) if i and i - 1 != index}
        fringe = obj["shape"] is None and any(
            objects[n]["shape"] is not None and objects[n]["area"] > obj["area"] for n in neighbours)
        if not fringe:
            keep.append(obj)
    return keep


def _fits(wanted: dict, found: dict, keys: tuple[str, ...]) -> bool:
    return all(wanted.get(k) is None or wanted[k] == found[k] for k in keys)


def _can_match(wanted: list[dict], found: list[dict], keys: tuple[str, ...]) -> bool:
    """Whether every wanted object gets its own found object agreeing on `keys` (bipartite matching)."""
    owner: dict[int, int] = {}  # found index -> wanted index

    def augment(i: int, seen: set[int]) -> bool:
        for j, candidate in enumerate(found):
            if j in seen or not _fits(wanted[i], candidate, keys):
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    return all(augment(i, set()) for i in range(len(wanted)))


def _in_third(position: str, found: dict, height: int, width: int) -> bool:
    """Whether an object's centroid lies in the named third of the image."""
    return {"left": found["cx"] < width / 3, "right": found["cx"] > 2 * width / 3,
            "top": found["cy"] < height / 3, "bottom": found["cy"] > 2 * height / 3}[position]


def _relation_holds(relation: str, a: dict, b: dict, height: int, width: int) -> bool:
    """A's offset from B along the relation's axis is large (RELATION_MIN_OFFSET) and dominant."""
    along, across = relation_offsets(relation, (a["cx"], a["cy"]), (b["cx"], b["cy"]))
    return along > RELATION_MIN_OFFSET * max(height, width) and along > abs(across)


def _position_holds(spec: dict, found: list[dict], height: int, width: int) -> bool:
    """Strict: the absolute or relative claim holds for objects matching on shape, size and colour."""
    full = ("shape", "size", "color")
    first = [f for f in found if _fits(spec["objects"][0], f, full)]
    if spec.get("position"):
        return any(_in_third(spec["position"], f, height, width) for f in first)
    second = [f for f in found if _fits(spec["objects"][1], f, full)]
    return any(_relation_holds(spec["relation"], a, b, height, width) for a in first for b in second if a is not b)


def _best_matches(wanted: dict, found: list[dict], keys: tuple[str, ...] = ("shape", "color", "size")) -> list[dict]:
    """The found objects agreeing with a wanted object on the most of its named `keys` (all found when none agree)."""
    named = [k for k in keys if wanted.get(k) is not None]
    agreement = [sum(wanted[k] == f[k] for k in named) for f in found]
    most = max(agreement, default=0)
    return [f for f, a in zip(found, agreement) if a == most]


def _skills(spec: dict, found: list[dict], height: int, width: int) -> dict:
    """Each skill judged on its own (None when the caption does not claim it); see judge_image."""
    objects = spec["objects"]
    wanted = objects * spec["count"] if len(objects) == 1 else list(objects)
    # Objects: isolated on the background (not the speckle of noise) and not larger than an object of the data
    # set (not a tinted background); the strict verdict counts every blob.
    found = [f for f in found if f["isolation"] >= MIN_ISOLATION and f["side"] <= MAX_SIDE * max(height, width)]
    colors = {o["color"] for o in objects if o["color"]}
    shapes = {o["shape"] for o in objects}
    skills: dict = {
        "color": all(any(f["color"] == c for f in found) for c in colors) if colors else None,
        "shape": all(any(f["shape"] == s for f in found) for s in shapes),
        "size": None,
        "count": len(found) == len(wanted),
        "position": None,
        "binding": None,
    }
    if any(o["size"] for o in objects):
        # The size of each sized object, found as the objects that best agree with it on shape and colour.
        skills["size"] = all(any(f["size"] == o["size"] for f in _best_matches(o, found, ("shape", "color")))
                             for o in objects if o["size"])
    if spec.get("position"):
        first = _best_matches(objects[0], found)
        skills["position"] = any(_in_third(spec["position"], f, height, width) for f in first)
    elif spec.get("relation"):
        first, second = _best_matches(objects[0], found), _best_matches(objects[1], found)
        skills["position"] = any(_relation_holds(spec["relation"], a, b, height, width)
                                 for a in first for b in second if a is not b)
    if len(objects) == 2 and all(o["color"] for o in objects):
        skills["binding"] = _can_match(wanted, found, ("shape", "color"))
    return skills


SKILLS = ("color", "shape", "size", "count", "position", "binding")
SKILL_MEANINGS = {
    "color": "the named colours are present as objects, whatever their shape",
    "shape": "the named shapes are present, whatever their colour",
    "size": "the named object (found by shape and colour where it can be) has the named size",
    "count": "exactly as many objects as the caption names (isolated blobs of an object's size)",
    "position": "the named object (found by the attributes it matches best) is where the caption says; "
                "for relations, the pair",
    "binding": "each colour sits on its own shape (two-object captions with two colours)",
}


def judge_image(image, spec: dict) -> dict:
    """Judge one image: strict `correct` (every claim at once) and each skill on its own (None = not claimed).

    `correct` is GenEval's verdict: objects matching shape, size and colour together, exactly the claimed
    number of them, and the position claim on those objects. The skills (SKILL_MEANINGS) are each judged
    alone, so a right-colour, unrecognised-shape object still scores `color`.
    """
    pixels = to_uint8_image(image)
    height, width = pixels.shape[:2]
    found = find_objects(pixels)
    objects = spec["objects"]
    wanted = objects * spec["count"] if len(objects) == 1 else list(objects)
    strict = [_can_match(wanted, found, ("shape", "size")), len(found) == len(wanted)]
    if any(o["color"] for o in objects):
        strict.append(_can_match(wanted, found, ("shape", "size", "color")))
    if spec.get("position") or spec.get("relation"):
        strict.append(_position_holds(spec, found, height, width))
    return {"correct": all(strict), **_skills(spec, found, height, width), "n_objects": len(found)}


JUDGED_COLUMNS = ["category", "correct", *SKILLS, "n_objects"]


def judge_images(images, specs: list[dict]) -> pd.DataFrame:
    """One row per image: category, correct (strict), the six skills (None = not claimed), n_objects."""
    if len(images) != len(specs):
        raise ValueError(f"got {len(images)} images but {len(specs)} specs; pass one spec per image")
    rows = [{"category": spec["category"], **judge_image(image, spec)} for image, spec in zip(images, specs)]
    return pd.DataFrame(rows, columns=JUDGED_COLUMNS)


def skill_scores(judged: pd.DataFrame) -> pd.DataFrame:
    """Per skill (judge_images columns): n captions claiming it, accuracy and Wilson 95% CI; unclaimed skills left out."""
    missing = [s for s in SKILLS if s not in judged.columns]
    if missing:
        raise ValueError(f"skill_scores needs judge_images' columns; missing {missing}")
    rows = []
    for skill in SKILLS:
        claimed = judged[skill].dropna()
        if len(claimed) == 0:
            continue
        hits = int(claimed.astype(bool).sum())
        low, high = wilson_interval(hits, len(claimed))
        rows.append({"skill": skill, "n": len(claimed), "accuracy": hits / len(claimed), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=["skill", "n", "accuracy", "ci_low", "ci_high"])


_CATEGORY_SKILLS = ("shape", "color", "count", "position")  # per-category skill columns of category_scores


def category_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Per category: n, strict accuracy, Wilson 95% CI and skill accuracies; plus "overall" = mean over categories."""
    rows = []
    for category in [c for c in CATEGORIES if c in set(df["category"])]:
        part = df[df["category"] == category]
        n, hits = len(part), int(part["correct"].astype(bool).sum())
        low, high = wilson_interval(hits, n)
        row = {"category": category, "n": n, "accuracy": hits / n, "ci_low": low, "ci_high": high}
        for attribute in ("shape", "color", "count", "position"):
            claimed = part[attribute].dropna()
            row[f"{attribute}_accuracy"] = float(claimed.astype(bool).mean()) if len(claimed) else float("nan")
        rows.append(row)
    if rows:
        # GenEval's overall score is the unweighted mean over categories; its standard error combines the
        # per-category ones, taken from the Wilson half-widths so it stays non-zero at 0% or 100%.
        mean = float(np.mean([r["accuracy"] for r in rows]))
        se = math.sqrt(sum(((r["ci_high"] - r["ci_low"]) / (2 * _Z)) ** 2 for r in rows)) / len(rows)
        overall = {"category": "overall", "n": int(sum(r["n"] for r in rows)), "accuracy": mean,
                   "ci_low": max(0.0, mean - _Z * se), "ci_high": min(1.0, mean + _Z * se)}
        for attribute in _CATEGORY_SKILLS:
            claimed = [r[f"{attribute}_accuracy"] for r in rows if not math.isnan(r[f"{attribute}_accuracy"])]
            overall[f"{attribute}_accuracy"] = float(np.mean(claimed)) if claimed else float("nan")
        rows.append(overall)
    return pd.DataFrame(rows, columns=["category", "n", "accuracy", "ci_low", "ci_high",
                                       *(f"{a}_accuracy" for a in _CATEGORY_SKILLS)])


def judge_ceiling(n_per_category: int = 200, resolution: int = 32, seed: int = 12345) -> pd.DataFrame:
    """category_scores of the judge on freshly rendered real images: the ceiling to show next to model scores."""
    frames = []
    for category in CATEGORIES:
        images, _, specs = render_shapes_dataset(n_per_category, resolution, seed, {category: 1.0})
        frames.append(judge_images(images, specs))
    return category_scores(pd.concat(frames, ignore_index=True))
