"""What a sampler sweep answers: the best cell and the fastest one as good as it, and the old guide's claims
("100 steps beat 50", "DDIM beats DDPM") as yes / no / not distinguishable from 95 % intervals.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

Z = 1.96  # 95% intervals throughout


def _cell(row: pd.Series) -> dict:
    keys = ("scheduler", "steps", "guidance", "accuracy", "ci_low", "ci_high", "seconds_per_image", "unet_evals_per_image")
    return {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in keys if k in row}


def best_settings(sweep: pd.DataFrame, cost: str = "seconds_per_image") -> dict:
    """"best": the highest overall accuracy; "fastest_within_ci": the cheapest cell (by `cost`) scoring >= best's CI low."""
    best = sweep.sort_values(["accuracy", cost], ascending=[False, True]).iloc[0]
    within = sweep[sweep["accuracy"] >= best["ci_low"]]
    fastest = within.sort_values([cost, "accuracy"], ascending=[True, False]).iloc[0]
    return {"best": _cell(best), "fastest_within_ci": _cell(fastest), "cells_within_ci": len(within),
            "speedup": float(best[cost] / max(fastest[cost], 1e-12)), "cost": cost,
            "rule": f"lowest {cost} among cells whose accuracy is at least the lower 95% bound of the best cell's"}


def _compare(a: pd.Series, b: pd.Series) -> dict:
    """Does cell a beat cell b? Difference with a 95% interval from the two intervals' standard errors."""
    # se from each Wilson-based interval's half-width; treating the cells as independent is conservative here,
    # since both use the same prompts and noise (positively correlated results make the true interval narrower).
    se = math.hypot((a["ci_high"] - a["ci_low"]) / (2 * Z), (b["ci_high"] - b["ci_low"]) / (2 * Z))
    diff = float(a["accuracy"] - b["accuracy"])
    return {"difference": diff, "ci_low": diff - Z * se, "ci_high": diff + Z * se, "se": se,
            "cis_separate": bool(a["ci_low"] > b["ci_high"] or b["ci_low"] > a["ci_high"]),
            "verdict": _verdict(diff - Z * se, diff + Z * se)}


def _verdict(low: float, high: float) -> str:
    return "yes" if low > 0 else "no" if high < 0 else "not distinguishable at this N"


def _pooled(comparisons: list[dict]) -> dict:
    """Mean difference over several comparisons, its 95% interval and verdict (treating them as independent)."""
    # They share prompts and noise, so this interval is approximate; the per-cell verdicts stand on their own.
    if not comparisons:
        return {"verdict": "not measured", "difference": None, "ci_low": None, "ci_high": None}
    diff = float(np.mean([c["difference"] for c in comparisons]))
    se = math.sqrt(sum(c["se"] ** 2 for c in comparisons)) / len(comparisons)
    return {"verdict": _verdict(diff - Z * se, diff + Z * se), "difference": diff, "ci_low": diff - Z * se, "ci_high": diff + Z * se}


def answer_guide_claims(sweep: pd.DataFrame, more_steps: tuple[int, int] = (100, 50),
                        samplers: tuple[str, str] = ("ddim", "ddpm")) -> dict:
    """Verdicts ("yes" / "no" / "not distinguishable at this N") on "100 steps beat 50" and "DDIM beats DDPM"."""
    cell = sweep.set_index(["scheduler", "steps", "guidance"])
    many, few = more_steps
    per_scheduler = []
    for scheduler in sweep["scheduler"].unique():
        rows = sweep[(sweep["scheduler"] == scheduler) & sweep["steps"].isin(more_steps)]
        pivot = rows.pivot_table(index="guidance", columns="steps", values="accuracy").dropna()
        if len(pivot.columns) < 2 or pivot.empty:
            continue
        guidance = float(pivot.mean(axis=1).idxmax())  # the guidance best for the two step counts together
        a, b = cell.loc[(scheduler, many, guidance)], cell.loc[(scheduler, few, guidance)]
        per_scheduler.append({"scheduler": scheduler, "guidance": guidance, f"accuracy_{many}": float(a["accuracy"]),
                              f"accuracy_{few}": float(b["accuracy"]), **_compare(a, b),
                              "time_ratio": float(a["seconds_per_image"] / max(b["seconds_per_image"], 1e-12))})
    first, second = samplers
    per_cell = []
    for (n_steps, guidance), group in sweep.groupby(["steps", "guidance"]):
        by_name = group.set_index("scheduler")
        if first in by_name.index and second in by_name.index:
            per_cell.append({"steps": int(n_steps), "guidance": float(guidance), **_compare(by_name.loc[first], by_name.loc[second])})
    n = int(sweep["n"].iloc[0]) if len(sweep) else 0
    return {
        "steps": {"question": f"Do {many} steps beat {few}?", **_pooled(per_scheduler), "per_scheduler": per_scheduler,
                  "n_per_cell": n, "method": "per scheduler at its best guidance; pooled = mean difference"},
        "samplers": {"question": f"Is {first.upper()} better than {second.upper()}?", **_pooled(per_cell),
                     "per_cell": per_cell, "n_per_cell": n, "method": "at equal steps and guidance; pooled = mean difference"},
    }
