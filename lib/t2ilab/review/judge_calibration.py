"""The judge, calibrated: real renders degraded in graded steps (blur, noise, colour shift, position jitter,
erosion, dilation) and each skill's score against the strength. `python -m t2ilab.review.judge_calibration` draws the figure.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from t2ilab.config import CATEGORIES
from t2ilab.datasets.shapes import COLORS, render_shapes_dataset
from t2ilab.review import judge

# Strengths per degradation, 0 first (the clean renders). Units: blur = Gaussian sigma in pixels; noise = standard
# deviation of additive Gaussian noise on the 0-255 scale; color_shift = share of the way to the palette
# neighbour; jitter = shift of each object as a share of the image side; erosion / dilation = radius in pixels.
STRENGTHS: dict[str, tuple[float, ...]] = {
    "blur": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
    "noise": (0.0, 20.0, 40.0, 60.0, 80.0, 120.0),
    "color_shift": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    "jitter": (0.0, 0.05, 0.1, 0.2, 0.3, 0.5),
    "erosion": (0.0, 1.0, 2.0, 3.0),
    "dilation": (0.0, 1.0, 2.0, 3.0),
}
UNITS = {"blur": "sigma (px)", "noise": "noise sd (0-255)", "color_shift": "share of the way to the neighbour colour",
         "jitter": "object shift (share of side)", "erosion": "radius (px)", "dilation": "radius (px)"}
# A curve may rise between neighbouring strengths by at most MONOTONIC_TOLERANCE or MONOTONIC_IMAGES images' worth
# (2/n), whichever is larger: every strength degrades the same images with the same noise pattern, scaled, and a
# threshold judge can flip a single image back (the mean falls; each image need not).
MONOTONIC_TOLERANCE = 0.03
MONOTONIC_IMAGES = 2
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)


def neighbour_colors() -> dict[str, str]:
    """Each palette colour's nearest other palette colour by hue angle (the confusion a colour shift tests)."""
    unit = _PALETTE / np.linalg.norm(_PALETTE, axis=1, keepdims=True)
    cosines = unit @ unit.T
    np.fill_diagonal(cosines, -1.0)
    names = list(COLORS)
    return {names[i]: names[int(j)] for i, j in enumerate(cosines.argmax(1))}


def _shift_colors(image: np.ndarray, t: float) -> np.ndarray:
    """Every pixel alpha * colour (renders are on black) becomes alpha * ((1 - t) colour + t neighbour)."""
    pixels = image.astype(np.float32)
    norms = np.linalg.norm(_PALETTE, axis=1)
    cosines = (pixels @ _PALETTE.T) / (np.linalg.norm(pixels, axis=-1, keepdims=True) * norms + 1e-6)
    index = cosines.argmax(-1)
    alpha = (pixels * _PALETTE[index]).sum(-1) / norms[index] ** 2
    neighbour = np.array([list(COLORS).index(n) for n in neighbour_colors().values()])
    target = (1 - t) * _PALETTE[index] + t * _PALETTE[neighbour[index]]
    return np.clip(np.round(alpha[..., None] * target), 0, 255).astype(np.uint8)


def _jitter(image: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Each object (a connected non-black region) moved `share` of the side in a random direction; cut at the border."""
    side = image.shape[0]
    components, count = ndimage.label(image.max(-1) > 0, structure=np.ones((3, 3), dtype=bool))
    out = np.zeros_like(image)
    for label in range(1, count + 1):
        angle = rng.uniform(0, 2 * math.pi)
        dy, dx = round(share * side * math.sin(angle)), round(share * side * math.cos(angle))
        ys, xs = np.nonzero(components == label)
        moved_y, moved_x = ys + dy, xs + dx
        inside = (moved_y >= 0) & (moved_y < side) & (moved_x >= 0) & (moved_x < image.shape[1])
        out[moved_y[inside], moved_x[inside]] = np.maximum(out[moved_y[inside], moved_x[inside]],
                                                           image[ys[inside], xs[inside]])
    return out


def _disk(radius: float) -> np.ndarray:
    r = int(math.ceil(radius))
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= radius * radius


def degrade(images: np.ndarray, kind: str, strength: float, seed: int = 0) -> np.ndarray:
    """uint8 (N, H, W, 3) renders degraded by `kind` at `strength` (see STRENGTHS for the units); 0 changes nothing."""
    if kind not in STRENGTHS:
        raise ValueError(f"unknown degradation {kind!r}; choose one of {list(STRENGTHS)}")
    if strength < 0:
        raise ValueError(f"{kind} strength must be >= 0, got {strength}")
    if strength == 0:
        return images.copy()
    out = np.empty_like(images)
    for i, image in enumerate(images):
        rng = np.random.default_rng([seed, i])
        if kind == "blur":
            out[i] = np.clip(np.round(ndimage.gaussian_filter(image.astype(np.float32), (strength, strength, 0))), 0, 255)
        elif kind == "noise":
            out[i] = np.clip(np.round(image + rng.normal(0, strength, image.shape)), 0, 255)
        elif kind == "color_shift":
            out[i] = _shift_colors(image, min(1.0, strength))
        elif kind == "jitter":
            out[i] = _jitter(image, strength, rng)
        else:
            grey = ndimage.grey_erosion if kind == "erosion" else ndimage.grey_dilation
            out[i] = grey(image, footprint=_disk(strength)[..., None])
    return out


def calibration_curves(n_per_category: int = 50, resolution: int = 16, seed: int = 777,
                       strengths: dict[str, tuple[float, ...]] | None = None) -> pd.DataFrame:
    """One row per (degradation, strength, skill): n, accuracy and Wilson 95% CI; skill "strict" is `correct`."""
    images, _, specs = [], [], []
    for category in CATEGORIES:  # the same number of images per category, as in the quality review
        part, _, part_specs = render_shapes_dataset(n_per_category, resolution, seed, {category: 1.0})
        images.append(part)
        specs += part_specs
    images = np.concatenate(images)
    rows = []
    for kind, levels in (strengths or STRENGTHS).items():
        for strength in levels:
            judged = judge.judge_images(degrade(images, kind, strength, seed), specs)
            hits = int(judged["correct"].sum())
            low, high = judge.wilson_interval(hits, len(judged))
            strict = {"skill": "strict", "n": len(judged), "accuracy": hits / len(judged), "ci_low": low, "ci_high": high}
            for row in [*judge.skill_scores(judged).to_dict(orient="records"), strict]:
                rows.append({"degradation": kind, "strength": float(strength), **row})
    curves = pd.DataFrame(rows)
    curves.attrs.update(resolution=resolution, n_per_category=n_per_category, seed=seed)
    return curves


def monotonic_violations(curves: pd.DataFrame, tolerance: float = MONOTONIC_TOLERANCE,
                         images: int = MONOTONIC_IMAGES) -> pd.DataFrame:
    """Steps where a skill's score rises from one strength to the next by more than max(tolerance, images / n)."""
    bad = []
    for (kind, skill), curve in curves.groupby(["degradation", "skill"], sort=False):
        scores = curve.sort_values("strength")[["strength", "accuracy", "n"]].to_numpy()
        for (weak, before, _), (strong, after, n) in zip(scores[:-1], scores[1:]):
            allowed = max(tolerance, images / n)
            if after > before + allowed:
                bad.append({"degradation": kind, "skill": skill, "from": weak, "to": strong, "rise": after - before,
                            "allowed": allowed})
    return pd.DataFrame(bad, columns=["degradation", "skill", "from", "to", "rise", "allowed"])


def calibration_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Scores as a wide table for reading: one row per (degradation, strength), one column per skill, 2 decimals."""
    table = curves.pivot(index=["degradation", "strength"], columns="skill", values="accuracy")
    order = [k for k in STRENGTHS if k in table.index.get_level_values(0)]
    skills = list(dict.fromkeys(curves["skill"]))
    return table.reindex(order, level=0)[skills].round(2)


def plot_calibration(curves: pd.DataFrame, path: str | Path | None = None):
    """One panel per degradation: each skill's score (95% CI band) against strength; saved to `path` when given."""
    import seaborn as sns
    from matplotlib.figure import Figure

    kinds = list(dict.fromkeys(curves["degradation"]))
    skills = list(dict.fromkeys(curves["skill"]))
    palette = dict(zip(skills, sns.color_palette("colorblind", len(skills))))
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(12, 6.8), dpi=80, layout="constrained")  # no pyplot: safe in any process
        axes = fig.subplots(2, math.ceil(len(kinds) / 2), sharey=True).ravel()
    for ax, kind in zip(axes, kinds):
        part = curves[curves["degradation"] == kind]
        for skill in skills:
            curve = part[part["skill"] == skill].sort_values("strength")
            style = {"color": "black", "ls": "--"} if skill == "strict" else {"color": palette[skill]}
            ax.plot(curve["strength"], curve["accuracy"], marker="o", ms=3, label=skill, **style)
            ax.fill_between(curve["strength"], curve["ci_low"], curve["ci_high"], alpha=0.12, color=style["color"])
        ax.set(title=kind.replace("_", " "), xlabel=UNITS.get(kind, "strength"), ylim=(-0.02, 1.02))
    for ax in axes[len(kinds):]:
        ax.set_visible(False)
    axes[0].set_ylabel("share judged right")
    axes[0].legend(fontsize="small", loc="lower left")
    attrs = curves.attrs
    fig.suptitle(f"Judge calibration: real renders at {attrs.get('resolution', '?')} px, "
                 f"{attrs.get('n_per_category', '?')} per category, degraded step by step (95% Wilson bands)")
    if path is not None:
        fig.savefig(path)
    return fig


def main(argv: list[str] | None = None) -> int:
    """Compute the curves, print them as a table and write the figure (docs/judge_calibration.png by default)."""
    parser = argparse.ArgumentParser(prog="python -m t2ilab.review.judge_calibration", description=__doc__)
    parser.add_argument("--out", default="docs/judge_calibration.png", help="where to write the figure (PNG)")
    parser.add_argument("--resolution", type=int, default=16, help="render size in pixels (the demo trains at 16)")
    parser.add_argument("--n_per_category", type=int, default=50, help="renders per category")
    parser.add_argument("--seed", type=int, default=777, help="seed of the renders and of the noise")
    args = parser.parse_args(argv)
    if args.n_per_category < 1 or not 8 <= args.resolution <= 1024:
        print("--n_per_category must be >= 1 and --resolution in 8..1024", file=sys.stderr)
        return 2
    curves = calibration_curves(args.n_per_category, args.resolution, args.seed)
    print(calibration_table(curves).to_string())
    violations = monotonic_violations(curves)
    rule = f"rise > max({MONOTONIC_TOLERANCE}, {MONOTONIC_IMAGES}/n)"
    print(f"\nnon-monotonic steps ({rule}): " + ("none" if violations.empty else "\n" + violations.to_string()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plot_calibration(curves, args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
