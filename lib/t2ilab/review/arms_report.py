"""What an arms run found, for reading: the strict overall and each skill per arm with 95 % intervals, the verdict
against `continue`, minutes per arm, and a plot of skills per arm with their intervals. The numbers stay in arms.json.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from t2ilab import readable
from t2ilab.files import read_json, write_json, write_text
from t2ilab.review.judge import SKILLS

TABLES_FILE = "arms.txt"
OVERALL = "strict overall"


def load_results(path: str | Path) -> dict:
    """arms.json from its path, its arms/ folder or the --out folder above it."""
    p = Path(path)
    for candidate in (p, p / "arms.json", p / "arms" / "arms.json"):
        if candidate.is_file():
            data = read_json(candidate)
            if data is not None:
                return data
            raise ValueError(f"{candidate} is not a readable arms.json; run t2ilab arms again to rewrite it")
    raise FileNotFoundError(f"no arms.json at {p}: run `t2ilab arms CHECKPOINT --out {p}` first")


def _vs(record: dict, measure: str) -> dict | None:
    versus = record.get("vs_baseline") or {}
    return versus.get("overall") if measure == OVERALL else (versus.get("skills") or {}).get(measure)


def _row(arm: str, judged_measure: dict | None, versus: dict | None, baseline: str) -> dict:
    score = readable.score(*(judged_measure.get(k) for k in ("accuracy", "ci_low", "ci_high"))) if judged_measure else readable.DASH
    if versus:
        diff, verdict = readable.signed(versus["difference"], versus["ci_low"], versus["ci_high"]), versus["verdict"]
    else:
        diff, verdict = readable.DASH, "the baseline" if arm == baseline else readable.DASH
    return {"score [95% CI]": score, f"vs {baseline} [95% CI]": diff, "verdict": verdict}


def results_table(result: dict) -> readable.Table | readable.Note:
    """One row per arm (and the source): what it changed, strict overall [95% CI], difference vs continue, verdict."""
    baseline = result.get("baseline", "continue")
    source = result.get("source") or {}
    rows = []
    if source.get("judged"):
        rows.append({"arm": f"source (epoch {source.get('epoch')})", "change": "where every arm starts",
                     **_row("source", source["judged"]["overall"], None, baseline)})
    for arm, record in (result.get("arms") or {}).items():
        if record.get("judged"):
            rows.append({"arm": arm, "change": record.get("change", ""),
                         **_row(arm, record["judged"]["overall"], _vs(record, OVERALL), baseline)})
    return readable.table_or_note(rows, "No arm judged yet: run t2ilab arms CHECKPOINT.")


def skills_table(result: dict) -> readable.Table | readable.Note:
    """One row per (arm, skill): score [95% CI], difference vs continue with Newcombe's interval, verdict."""
    baseline = result.get("baseline", "continue")
    rows = []
    for arm, record in (result.get("arms") or {}).items():
        by_skill = {s["skill"]: s for s in (record.get("judged") or {}).get("skills", [])}
        for skill in [s for s in SKILLS if s in by_skill]:
            rows.append({"arm": arm, "skill": skill, **_row(arm, by_skill[skill], _vs(record, skill), baseline)})
    return readable.table_or_note(rows, "No skills judged yet: run t2ilab arms CHECKPOINT.")


def minutes_table(result: dict) -> readable.Table | readable.Note:
    """Per arm: whether it was trained now, epochs and optimizer steps, the learning rate it ran at, minutes spent."""
    rows = []
    for arm, record in (result.get("arms") or {}).items():
        judged = record.get("judged") or {}
        lr = f"{record['lr_first']:.2e} -> {record['lr_last']:.2e}" if not (
            readable.missing(record.get("lr_first")) or readable.missing(record.get("lr_last"))) else readable.DASH
        rows.append({"arm": arm, "status": record.get("status", ""),
                     "epochs": f"{record.get('source_epoch')} -> {record.get('source_epoch', 0) + record.get('epochs', 0)}",
                     "steps": record.get("steps", readable.DASH), "learning rate (first -> last step)": lr,
                     "train minutes": readable.number(record.get("train_minutes")),
                     "judge minutes": readable.number(judged.get("judge_minutes"))})
    return readable.table_or_note(rows, "No arm trained yet.")


def notes(result: dict) -> list[str]:
    """The caveats an arm carries (a schedule stretched to fit, a learning rate already at 0), one line each."""
    return [f"{arm}: {note}" for arm, record in (result.get("arms") or {}).items() for note in record.get("notes", [])]


def render(result: dict) -> str:
    """The tables as text, as `t2ilab arms` prints them and arms.txt keeps them."""
    parts = [f"Arms from {result['source']['checkpoint']} (+{result['epochs']} epochs each), judged with "
             f"{result['judging']['n_per_category']} images per category, seed {result['judging']['seed']}:",
             str(results_table(result)), "", "Skills:", str(skills_table(result)), "", "Minutes per arm:",
             str(minutes_table(result))]
    extra = notes(result)
    if extra:
        parts += ["", "Notes:", *(f"  - {line}" for line in extra)]
    return "\n".join(parts)


def write_results(result: dict, folder: str | Path) -> Path:
    """arms.json (every number) and arms.txt (the tables) in `folder`, each written whole or not at all."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "arms.json"
    write_json(path, result, sort_keys=False)
    if any((r.get("judged") for r in (result.get("arms") or {}).values())):
        write_text(root / TABLES_FILE, render(result) + "\n")
    return path


def skills_plot(result: dict, path: str | Path | None = None) -> Figure:
    """Strict overall and each skill per arm: points with 95 % interval bars, arms side by side per measure."""
    series = [("source", (result.get("source") or {}).get("judged"))]
    series += [(arm, record.get("judged")) for arm, record in (result.get("arms") or {}).items()]
    series = [(name, judged) for name, judged in series if judged]
    measures = [OVERALL] + [s for s in SKILLS if any(s in {k["skill"] for k in j["skills"]} for _, j in series)]
    with sns.axes_style("whitegrid"):  # a style context, so a notebook's global theme is left alone
        fig = plt.figure(figsize=(11, 4.2), dpi=80, layout="constrained")
        plt.close(fig)  # pyplot keeps no reference; the notebook shows the returned figure once
        ax = fig.subplots()
    colors = sns.color_palette("colorblind", len(series))
    width = 0.8 / max(1, len(series))
    for k, (name, judged) in enumerate(series):
        by_measure = {OVERALL: judged["overall"], **{s["skill"]: s for s in judged["skills"]}}
        xs, ys, lows, highs = [], [], [], []
        for i, measure in enumerate(measures):
            m = by_measure.get(measure)
            if m and not readable.missing(m.get("accuracy")):
                xs.append(i - 0.4 + width * (k + 0.5))
                ys.append(m["accuracy"])
                lows.append(m["accuracy"] - m["ci_low"])
                highs.append(m["ci_high"] - m["accuracy"])
        ax.errorbar(xs, ys, yerr=np.array([lows, highs]), fmt="o", capsize=3, color=colors[k], label=name)
    ax.set_xticks(range(len(measures)), measures)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("judged share correct (95 % CI)")
    ax.set_title(f"arms after +{result.get('epochs')} epochs, {result['judging']['n_per_category']} images per category")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if path is not None:
        fig.savefig(path)
    return fig
