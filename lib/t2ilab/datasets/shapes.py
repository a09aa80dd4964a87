"""The procedural data set: GenEval-style specs of coloured shapes, their captions, and deterministic renders.

A spec is a JSON-serialisable dict of claims; `caption_for` and `parse_caption` map it to English and back.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from t2ilab.config import CATEGORIES

BACKGROUND = (0, 0, 0)  # black: every palette colour is >= 230 away from it, so it is never confused
# Near corners of the RGB cube: pairwise distances >= 130 and hue angles >= 25 degrees, so the judge tells them
# apart even on antialiased edges (which only scale a colour towards the black background).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 80, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 50, 220),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom")
RELATIONS = ("above", "below", "left of", "right of")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}

# Side of an object's bounding box as a fraction of the image side; the judge splits sizes at SIZE_SPLIT.
SIZE_RANGE = {"small": (0.20, 0.24), "large": (0.34, 0.40)}
SIZE_SPLIT = 0.29
# Relative positions: rendered with a clear margin over what the judge requires (dominant axis, >= 0.1 side).
RELATION_MIN_OFFSET = 0.2
RELATION_DOMINANCE = 0.1
POSITION_MARGIN = 0.04  # absolute positions: centroid at least this fraction of the side inside the named third
# Where a shape's area centroid sits down its box: a triangle points up, so 2/3 of the way down.
CENTROID_DOWN = {"circle": 1 / 2, "square": 1 / 2, "triangle": 2 / 3}
_PLACEMENT_ATTEMPTS = 60  # layouts tried before giving up; the second half forces unspecified sizes to small
_POSITION_TRIES = 30  # positions tried per object within one layout


def sample_spec(category: str, rng: np.random.Generator) -> dict:
    """Draw a random spec of one category: {"category", "objects", "count", "position", "relation"}."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; allowed: {list(CATEGORIES)}")
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))]  # distinct shapes when two are needed
    colors = [list(COLORS)[i] for i in rng.permutation(len(COLORS))]
    spec: dict = {"category": category, "objects": [], "count": 1, "position": None, "relation": None}
    if category == "single_object":
        size = SIZES[rng.integers(len(SIZES))] if rng.random() < 0.5 else None
        spec["objects"] = [_object(shapes[0], None, size)]
    elif category == "two_objects":
        spec["objects"] = [_object(shapes[0]), _object(shapes[1])]
    elif category == "counting":
        color = colors[0] if rng.random() < 0.5 else None
        spec["objects"] = [_object(shapes[0], color)]
        spec["count"] = int(rng.integers(2, 5))
    elif category == "colors":
        spec["objects"] = [_object(shapes[0], colors[0])]
    elif category == "position":
        if rng.random() < 0.5:
            spec["objects"] = [_object(shapes[0], colors[0])]
            spec["position"] = POSITIONS[rng.integers(len(POSITIONS))]
        else:  # relative: the shapes differ, the colours are independent (may be equal)
            other = list(COLORS)[rng.integers(len(COLORS))]
            spec["objects"] = [_object(shapes[0], colors[0]), _object(shapes[1], other)]
            spec["relation"] = RELATIONS[rng.integers(len(RELATIONS))]
    else:  # color_attr: different shapes and different colours, so the binding is what is tested
        spec["objects"] = [_object(shapes[0], colors[0]), _object(shapes[1], colors[1])]
    if len(spec["objects"]) == 2:
        spec["count"] = 2
    return spec


def _object(shape: str, color: str | None = None, size: str | None = None) -> dict:
    return {"shape": shape, "color": color, "size": size}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(obj: dict, plural: bool = False) -> str:
    words = [w for w in (obj.get("size"), obj.get("color"), obj["shape"]) if w]
    if plural:
        return " ".join(words) + "s"
    return _article(words[0]) + " " + " ".join(words)


def caption_for(spec: dict) -> str:
    """The lower-case English caption of a spec, e.g. "three green triangles" or "a red circle above a blue square"."""
    objects, count = spec["objects"], spec["count"]
    if len(objects) == 1 and count > 1:
        if count not in NUMBER_WORDS:
            raise ValueError(f"count must be one of {sorted(NUMBER_WORDS)} to be captioned, got {count}")
        return f"{NUMBER_WORDS[count]} {_phrase(objects[0], plural=True)}"
    if spec.get("relation"):
        return f"{_phrase(objects[0])} {spec['relation']} {_phrase(objects[1])}"
    text = " and ".join(_phrase(o) for o in objects)
    if spec.get("position"):
        text += " " + POSITION_PHRASES[spec["position"]]
    return text


def _parse_object(words: list[str], plural: bool) -> tuple[dict, list[str]] | None:
    """Parse '[a|an] [size] [color] shape[s]' from the front of `words`; the rest is returned."""
    i = 0
    if not plural:
        if not words or words[0] not in ("a", "an"):
            return None
        i = 1
    size = words[i] if i < len(words) and words[i] in SIZES else None
    i += size is not None
    color = words[i] if i < len(words) and words[i] in COLORS else None
    i += color is not None
    if i >= len(words):
        return None
    shape = words[i][:-1] if plural and words[i].endswith("s") else words[i]
    if shape not in SHAPES or (plural and words[i] == shape):
        return None
    return _object(shape, color, size), words[i + 1 :]


def parse_caption(text: str) -> dict | None:
    """The spec of a caption in this grammar (the inverse of caption_for); None when it is not in the grammar."""
    words = text.lower().strip().rstrip(".").split()
    spec: dict = {"category": "", "objects": [], "count": 1, "position": None, "relation": None}
    counts = {word: n for n, word in NUMBER_WORDS.items()}
    if words and words[0] in counts:
        parsed = _parse_object(words[1:], plural=True)
        if parsed is None or parsed[1]:
            return None
        spec.update(category="counting", objects=[parsed[0]], count=counts[words[0]])
        return spec
    parsed = _parse_object(words, plural=False)
    if parsed is None:
        return None
    first, rest = parsed
    spec["objects"] = [first]
    phrases = {tuple(p.split()): name for name, p in POSITION_PHRASES.items()}
    relations = {tuple(r.split()): r for r in RELATIONS}
    if tuple(rest) in phrases:
        spec["position"] = phrases[tuple(rest)]
        rest = []
    elif rest:
        for connector in [("and",), *relations]:
            if tuple(rest[: len(connector)]) == connector:
                second = _parse_object(rest[len(connector) :], plural=False)
                if second is None or second[1]:
                    return None
                spec["objects"].append(second[0])
                spec["count"] = 2
                spec["relation"] = relations.get(connector)
                rest = []
                break
        if rest:
            return None
    colored = [o["color"] is not None for o in spec["objects"]]
    if spec["position"] or spec["relation"]:
        spec["category"] = "position"
    elif len(spec["objects"]) == 2:
        spec["category"] = "color_attr" if all(colored) else "two_objects"
    else:
        spec["category"] = "colors" if colored[0] else "single_object"
    return spec


def _centroid(shape: str, x: float, y: float, side: float) -> tuple[float, float]:
    return x + side / 2, y + side * CENTROID_DOWN[shape]


def relation_offsets(relation: str, a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """(along, across): how far centroid a is `relation` of centroid b on the named axis, and the other offset."""
    dx, dy = b[0] - a[0], b[1] - a[1]  # image y grows downwards
    return {"above": (dy, dx), "below": (-dy, dx), "left of": (dx, dy), "right of": (-dx, dy)}[relation]


def _layout(spec: dict, res: int, rng: np.random.Generator) -> list[tuple[str, str, float, float, float]]:
    """Place the spec's objects: (shape, color, x, y, side) in output pixels, inside the image, never touching."""
    border, gap = max(1.0, 0.03 * res), max(1.5, 0.06 * res)
    for attempt in range(_PLACEMENT_ATTEMPTS):
        force_small = attempt >= _PLACEMENT_ATTEMPTS // 2
        placed: list[tuple[str, str, float, float, float]] = []
        for obj in spec["objects"]:
            # Always draw colour and size, so a spec that differs only in given attributes gets the same layout.
            color_draw, size_draw, jitter = rng.integers(len(COLORS)), rng.integers(len(SIZES)), rng.random()
            color = obj["color"] or list(COLORS)[color_draw]
            size = obj["size"] or ("small" if force_small else SIZES[size_draw])
            lo, hi = SIZE_RANGE[size]
            side = (lo + (hi - lo) * jitter) * res
            copies = spec["count"] if len(spec["objects"]) == 1 else 1
            for _ in range(copies):
                spot = _place(obj["shape"], side, placed, spec, res, border, gap, rng)
                if spot is None:
                    break
                placed.append((obj["shape"], color, spot[0], spot[1], side))
        if len(placed) == max(spec["count"], len(spec["objects"])):
            return placed
    raise RuntimeError(f"could not place {caption_for(spec)!r} in {res}x{res} px; use a larger data.resolution")


def _place(shape: str, side: float, placed: list, spec: dict, res: int, border: float, gap: float,
           rng: np.random.Generator) -> tuple[float, float] | None:
    """A top-left corner that keeps the new object inside, apart from the others and true to the spec."""
    x_lo = y_lo = border
    x_hi = y_hi = res - border - side
    # Absolute positions: the area centroid inside the named third, POSITION_MARGIN clear of its edge.
    margin, down = POSITION_MARGIN * res, CENTROID_DOWN[shape]
    position = spec.get("position")
    if position == "left":
        x_hi = min(x_hi, res / 3 - margin - side / 2)
    elif position == "right":
        x_lo = max(x_lo, 2 * res / 3 + margin - side / 2)
    elif position == "top":
        y_hi = min(y_hi, res / 3 - margin - down * side)
    elif position == "bottom":
        y_lo = max(y_lo, 2 * res / 3 + margin - down * side)
    if x_lo > x_hi or y_lo > y_hi:
        return None
    for _ in range(_POSITION_TRIES):
        x, y = x_lo + (x_hi - x_lo) * rng.random(), y_lo + (y_hi - y_lo) * rng.random()
        # Bounding boxes separated by `gap` on some axis: objects never touch, so components stay apart.
        if any(x < px + ps + gap and px < x + side + gap and y < py + ps + gap and py < y + side + gap
               for _, _, px, py, ps in placed):
            continue
        if spec.get("relation") and placed:
            first = _centroid(placed[0][0], *placed[0][2:])
            along, across = relation_offsets(spec["relation"], first, _centroid(shape, x, y, side))
            if along < RELATION_MIN_OFFSET * res or along < abs(across) + RELATION_DOMINANCE * res:
                continue
        return x, y
    return None


def render_spec(spec: dict, resolution: int, rng: np.random.Generator, supersample: int = 4) -> np.ndarray:
    """Render a spec as an (H, W, 3) uint8 image; unspecified colours and sizes are drawn from rng."""
    if not 8 <= resolution <= 1024:
        raise ValueError(f"resolution must be in 8..1024 pixels, got {resolution}")
    for obj in spec["objects"]:
        known = obj["shape"] in SHAPES and obj["color"] in (None, *COLORS) and obj["size"] in (None, *SIZES)
        if not known:
            raise ValueError(f"object {obj} is not drawable; shapes {SHAPES}, colours {list(COLORS)}, sizes {SIZES}")
    big = resolution * supersample
    canvas = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for shape, color, x, y, side in _layout(spec, resolution, rng):
        x0, y0 = round(x * supersample), round(y * supersample)
        x1, y1 = round((x + side) * supersample), round((y + side) * supersample)
        fill = COLORS[color]
        if shape == "circle":
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
        elif shape == "square":
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
    # BOX averages each supersample block exactly: area-weighted antialiasing.
    return np.asarray(canvas.resize((resolution, resolution), Image.Resampling.BOX))


def render_shapes_dataset(
    num_samples: int, resolution: int, seed: int, category_mix: dict[str, float]
) -> tuple[np.ndarray, list[str], list[dict]]:
    """Render (images (N,H,W,3) uint8, captions, specs); sample i depends only on (seed, i) and the mix."""
    unknown = sorted(set(category_mix) - set(CATEGORIES))
    weights = np.array([float(category_mix.get(c, 0.0)) for c in CATEGORIES])
    if unknown or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"category_mix {category_mix} needs weights >= 0 with a positive sum over {list(CATEGORIES)}")
    probs = weights / weights.sum()
    images = np.empty((num_samples, resolution, resolution, 3), dtype=np.uint8)
    captions, specs = [], []
    for i in range(num_samples):
        rng = np.random.default_rng([seed, i])
        spec = sample_spec(CATEGORIES[rng.choice(len(CATEGORIES), p=probs)], rng)
        images[i] = render_spec(spec, resolution, rng)
        captions.append(caption_for(spec))
        specs.append(spec)
    return images, captions, specs
