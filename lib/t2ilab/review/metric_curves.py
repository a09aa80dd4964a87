"""The review's measured distances per milestone for the report index: one summary per review (CLIP score, FID and
KID with their intervals, the in-domain KID), the index's extra columns, and metrics_vs_epoch.png.
"""

from __future__ import annotations

import os
from pathlib import Path

from t2ilab import readable
from t2ilab.review.metric_tables import plus_minus, value

METRICS_PLOT = "metrics_vs_epoch.png"
# key -> (index column, plot title); each summary value is {"value", "low", "high", "n"} or {"note"}
COLUMNS = {"clip": ("CLIP score [95% CI]", "CLIP score, generated (95% CI)"),
           "fid": ("FID (Inception) [95% CI]", "FID on Inception features (bootstrap 95%)"),
           "kid": ("KID (Inception) ± std", "KID on Inception features (± std)"),
           "fid_extractor": ("FID (extractor) [95% CI]", "FID on your feature extractor (bootstrap 95%)"),
           "kid_extractor": ("KID (extractor) ± std", "KID on your feature extractor (± std)"),
           "domain_kid": ("in-domain KID ± std", "in-domain KID (± std)")}


def _kid(kid: dict) -> dict:
    return {"value": kid["mean"], "low": kid["mean"] - kid["std"], "high": kid["mean"] + kid["std"], "std": kid["std"]}


def metric_summary(review: dict | None) -> dict[str, dict]:
    """key -> {"value", "low", "high", "n"} (or {"note"}) for each metric a quality review measured."""
    if not review:
        return {}
    out: dict[str, dict] = {}
    standard = review.get("standard") or {}
    clip = standard.get("clip_score") or {}
    if clip.get("status") == "ok":
        g = clip["generated"]
        out["clip"] = {"value": g["mean"], "low": g["ci_low"], "high": g["ci_high"], "n": g["n"]}
    for key, suffix in (("inception_weights", ""), ("feature_extractor", "_extractor")):
        part = standard.get(key) or {}
        if part.get("status") == "ok":
            fid = part["fid"]
            out["fid" + suffix] = {"value": fid["value"], "low": fid["ci_low"], "high": fid["ci_high"], "n": part["n_real"]}
            out["kid" + suffix] = _kid(part["kid"]) | {"n": part["n_real"]}
        elif part.get("status") == "too few images":
            out["fid" + suffix] = out["kid" + suffix] = {"note": part["message"]}
    distance = review.get("distance") or {}
    if distance.get("kid"):
        out["domain_kid"] = _kid(distance["kid"]) | {"n": distance.get("n_real")}
    elif distance.get("kid_note"):
        out["domain_kid"] = {"note": distance["kid_note"]}
    return out


def cell(summary: dict | None) -> str:
    """'7.21 [3.40, 11.02] (n=32)' / '0.0123 ± 0.0040 (n=40)' / 'too few ...' / a dash."""
    if not summary:
        return readable.DASH
    if "note" in summary:
        return summary["note"]
    if "std" in summary:
        text = plus_minus(summary["value"], summary["std"])
    elif readable.missing(summary.get("low")) or readable.missing(summary.get("high")):
        text = value(summary["value"])
    else:
        text = f"{value(summary['value'])} [{value(summary['low'])}, {value(summary['high'])}]"
    return text + (f" (n={summary['n']})" if summary.get("n") else "")


def columns(rows: list[dict]) -> list[str]:
    """The metric keys any milestone has, in COLUMNS order."""
    return [key for key in COLUMNS if any(key in (r.get("metrics") or {}) for r in rows)]


def plot_metrics_vs_epoch(rows: list[dict], path: Path, dpi: int = 80) -> Path | None:
    """One panel per measured metric against epoch, with its interval as a band; None (no file) when none has a number."""
    import seaborn as sns
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    keys = [k for k in columns(rows) if any("value" in (r.get("metrics") or {}).get(k, {}) for r in rows)]
    if not keys:
        path.unlink(missing_ok=True)
        return None
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(4.2 * len(keys), 3.4), dpi=dpi, layout="constrained")  # no pyplot: safe in any process
        axes = fig.subplots(1, len(keys), squeeze=False)[0]
    colour = sns.color_palette()[0]
    for ax, key in zip(axes, keys):
        points = [(r["epoch"], r["metrics"][key]) for r in rows if "value" in (r.get("metrics") or {}).get(key, {})]
        x = [e for e, _ in points]
        y = [float(p["value"]) for _, p in points]
        low = [float(p["low"]) if p.get("low") is not None else float(p["value"]) for _, p in points]
        high = [float(p["high"]) if p.get("high") is not None else float(p["value"]) for _, p in points]
        ax.plot(x, y, marker="o", color=colour)
        ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)
        n = points[-1][1].get("n")
        kind = "generated" if key == "clip" else "real"  # CLIP scores generated images; the distances count real ones
        ax.set(title=COLUMNS[key][1], xlabel="epoch", ylabel=f"n = {n} {kind} images" if n else "")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
