"""The review's distances and standard metrics as a reader sees them: each number with its sample size, its
interval and one sentence on what it means; a metric that could not run shows the sentence saying why instead.
"""

from __future__ import annotations

import math

from t2ilab import readable
from t2ilab.readable import DASH, Note, Table, table_or_note
from t2ilab.review.features import SCALE_NOTE

MEANING = {
    "clip": "prompt-image agreement: 100 x cosine of CLIP's image and caption embeddings (0 when negative); higher is better",
    "clip_real": "the same score of the real held-out images with their own captions: what a perfect model reaches",
    "fid": "Fréchet distance of generated vs real feature distributions; 0 = the same, lower is better; biased upward at "
           "small N, so compare milestones only at the same N",
    "kid": "kernel distance of the same features; unbiased, so two samples of one distribution score ~0 at any N; "
           "lower is better",
}
WHAT = {"inception_weights": "Inception", "feature_extractor": "feature extractor"}


def value(x) -> str:
    """Fixed decimals chosen by size (1 from 100, 2 from 1, else 4, more for tiny values): never 2.1e+08, never nan."""
    if readable.missing(x):
        return DASH
    x = float(x)
    if abs(x) >= 1 or x == 0:
        return readable.number(x, 1 if abs(x) >= 100 else 2)
    return readable.number(x, min(8, max(4, 1 - math.floor(math.log10(abs(x))))))  # two significant digits at least


def _interval(mean, low, high) -> str:
    text = value(mean)
    return text if readable.missing(low) or readable.missing(high) else f"{text} [{value(low)}, {value(high)}]"


def plus_minus(mean, std) -> str:
    """'4.43 ± 0.12'; a spread below the mean's last shown digit reads '± <0.01', never ± 0.00000000."""
    if readable.missing(std):
        return value(mean)
    shown = value(mean)
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    if abs(float(std)) < 0.5 * 10 ** -decimals:
        return f"{shown} ± <{10 ** -decimals:.{decimals}f}"
    return f"{shown} ± {float(std):.{decimals}f}"


def standard_table(review: dict) -> Table | Note:
    """CLIP score, FID and KID on Inception and on the feature extractor: value [interval], images, what it says."""
    standard = review.get("standard")
    if not standard:
        return Note("No standard metrics in this review (it was made before they existed): run `t2ilab report --force`.")
    rows = []
    clip = standard.get("clip_score") or {}
    if clip.get("status") == "ok":
        for key, label, meaning in (("generated", "CLIP score, generated images", "clip"),
                                    ("real", "CLIP score, real held-out images", "clip_real")):
            part = clip.get(key)
            if part:
                rows.append({"metric": label, "value [95% CI]": _interval(part["mean"], part["ci_low"], part["ci_high"]),
                             "images": part["n"], "what it says": MEANING[meaning]})
    else:
        rows.append({"metric": "CLIP score", "value [95% CI]": DASH, "images": DASH, "what it says": clip.get("message", "")})
    for key, what in WHAT.items():
        part = standard.get(key) or {}
        if part.get("status") != "ok":
            rows.append({"metric": f"FID / KID ({what})", "value [95% CI]": DASH, "images": DASH,
                         "what it says": part.get("message", "")})
            continue
        images = f"{part['n_generated']} generated / {part['n_real']} real"
        fid, kid = part["fid"], part["kid"]
        rows.append({"metric": f"FID ({what}, {part['feature_dim']} features)",
                     "value [95% CI]": _interval(fid["value"], fid["ci_low"], fid["ci_high"]), "images": images,
                     "what it says": MEANING["fid"] + f" (interval: {fid['bootstrap']} bootstrap resamples)"})
        rows.append({"metric": f"KID ({what})", "value [95% CI]": f"{plus_minus(kid['mean'], kid['std'])} (± std)",
                     "images": images, "what it says": MEANING["kid"] + f" (std over {kid['subsets']} subsets of {kid['subset_size']})"})
    return table_or_note(rows, "")


def distance_table(review: dict) -> Table | Note:
    """In-domain KID and FD: generated vs real, and two real samples (the floor); a sentence where N is too small."""
    distance = review.get("distance") or {}
    if not distance:
        return Note("No in-domain distances in this review.")
    reference = distance.get("reference", "training")
    rows = []
    for label, part, n in ((f"generated vs {reference} images", distance, f"{distance.get('n_generated')} / {distance.get('n_real')}"),
                           ("held-out vs training images (the floor)", distance.get("real_baseline") or {},
                            f"{(distance.get('real_baseline') or {}).get('n_heldout')} / {(distance.get('real_baseline') or {}).get('n_real')}")):
        if not part:
            continue
        kid = part.get("kid") or {}
        rows.append({"comparison": label,
                     "KID ± std": plus_minus(kid.get("mean"), kid.get("std")) if kid else part.get("kid_note") or DASH,
                     "FD": value(part.get("fd")) if part.get("fd") is not None else part.get("fd_note") or DASH,
                     "images (each side)": n})
    return table_or_note(rows, "No in-domain distances in this review.")


def distance_explanation(review: dict) -> str:
    """What the in-domain numbers are, on which scale, and the minimum sample size."""
    distance = review.get("distance") or {}
    minimum = distance.get("min_images")
    text = ("In-domain distances: KID and FD in the features of a small autoencoder trained on this data set's own "
            "training images (no downloads). " + distance.get("scale", SCALE_NOTE))
    if minimum:
        text += f" Each needs at least {minimum} images per side (reports.min_distance_images); below that the table says so."
    return text + (" KID is unbiased: two samples of one distribution score about 0 at any N (slightly negative is "
                   "noise); FD is biased upward at small N, so compare milestones at the same N.")


def heldout_table(review: dict) -> Table | Note:
    """The folder review's prompts: held-out captions and your own, with words the model never saw in training."""
    rows = [{"prompt": r["prompt"], "from": r["source"],
             "real image": "yes" if r.get("real_index") is not None else "no",
             "unknown words": ", ".join(r.get("unknown_words") or []) or DASH}
            for r in (review.get("heldout") or {}).get("rows") or []]
    return table_or_note(rows, "The shapes review uses the fixed prompts of configs/review_prompts.yaml (grid above).")


def heldout_summary(review: dict) -> str:
    """One line on what the folder review drew: captions, images per caption, unknown words."""
    held = review.get("heldout")
    if not held:
        return "Shapes data: grids use the fixed review prompts; generated sets use training captions."
    unknown = sum(1 for r in held["rows"] if r.get("unknown_words"))
    return (f"Folder data: prompts are the {held['n_heldout']} held-out validation captions (never trained on); "
            f"{held['n_generated']} images generated from them (about {held['per_caption']:.0f} per caption) are "
            f"compared with the {held['n_heldout']} real held-out images. {unknown} of the {len(held['rows'])} grid "
            f"prompts have words the model never saw in training (listed below).")
