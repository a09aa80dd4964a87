"""Skill scores for readers: a table per milestone and one sentence on what changed since the previous one.

A skill "rose" only when the 95 % interval of its difference (Newcombe) excludes zero, so a sentence never
reports noise as learning; "no clear change at this N" says how much the sample size allows.
"""

from __future__ import annotations

import pandas as pd

from t2ilab import readable
from t2ilab.intervals import change_word, difference_interval
from t2ilab.review.judge import SKILLS

# What each skill checks, in the words of the skill-scores issue: a reader needs this next to the number.
MEANING = {
    "color": "the named colour is there, whatever the shape",
    "shape": "the named shape is there, whatever the colour",
    "size": "the object has the named size (small / large)",
    "count": "the number of objects is the one asked for",
    "position": "the named object sits where the caption says",
    "binding": "two objects: each colour on its own shape",
}
NO_SKILLS = ("No skill scores: the judge reads the shapes data set only (folder data gets distances instead), "
             "or this review was made before skills were judged.")


def skills_by_name(skills) -> dict[str, dict]:
    """skill -> {accuracy, ci_low, ci_high, n} from records, a frame or a dict keyed by skill; {} for None."""
    if skills is None:
        return {}
    if isinstance(skills, pd.DataFrame):
        skills = skills.to_dict(orient="records")
    if isinstance(skills, dict):
        return {name: dict(row) for name, row in skills.items() if isinstance(row, dict)}
    return {row["skill"]: dict(row) for row in skills if isinstance(row, dict) and "skill" in row}


def _ordered(names) -> list[str]:
    return [s for s in SKILLS if s in names] + sorted(set(names) - set(SKILLS))


def skills_table(skills) -> readable.Table | readable.Note:
    """Skill, score with its 95 % interval, images judged on it, and what it checks; a note when there are none."""
    by_name = skills_by_name(skills)
    rows = [{"skill": name, "score [95% CI]": readable.score(r.get("accuracy"), r.get("ci_low"), r.get("ci_high")),
             "images judged": int(r["n"]) if not readable.missing(r.get("n")) else readable.DASH,
             "what it checks": MEANING.get(name, "")}
            for name, r in ((n, by_name[n]) for n in _ordered(by_name))]
    return readable.table_or_note(rows, NO_SKILLS)


def _hits(row: dict) -> tuple[int, int]:
    n = int(row["n"])
    return int(round(float(row["accuracy"]) * n)), n


def skill_changes(current, previous) -> list[dict]:
    """Per skill judged in both: now, before, difference with Newcombe's 95 % interval, and rose / fell / no clear change."""
    now, before = skills_by_name(current), skills_by_name(previous)
    changes = []
    for name in _ordered(set(now) & set(before)):
        a, b = now[name], before[name]
        if any(readable.missing(r.get(k)) for r in (a, b) for k in ("accuracy", "n")) or not (a["n"] and b["n"]):
            continue
        diff, low, high = difference_interval(*_hits(a), *_hits(b))
        changes.append({"skill": name, "now": float(a["accuracy"]), "before": float(b["accuracy"]), "difference": diff,
                        "ci_low": low, "ci_high": high, "n_now": int(a["n"]), "n_before": int(b["n"]),
                        "change": change_word(low, high)})
    return changes


def change_sentence(changes: list[dict], previous_epoch=None) -> str:
    """'Since epoch 12: color rose (0.45 → 0.81, +0.36 [+0.22, +0.48]); shape, size: no clear change at this N.'"""
    since = f"Since epoch {previous_epoch}" if previous_epoch is not None else "Since the previous milestone"
    if not changes:
        return f"{since}: no skills judged at both milestones, nothing to compare."
    parts = []
    for word in ("rose", "fell"):
        moved = [c for c in changes if c["change"] == word]
        if moved:
            parts.append("; ".join(
                f"{c['skill']} {word} ({readable.number(c['before'])} → {readable.number(c['now'])}, "
                f"{readable.signed(c['difference'], c['ci_low'], c['ci_high'])})" for c in moved))
    still = [c["skill"] for c in changes if c["change"] not in ("rose", "fell")]
    if not parts:
        return f"{since}: no skill changed clearly at this N ({', '.join(still)})."
    if still:
        parts.append(f"{', '.join(still)}: no clear change at this N")
    return f"{since}: " + "; ".join(parts) + "."


def review_sentence(review: dict) -> str:
    """The change sentence of a quality review against the previous milestone it was compared with."""
    versus = review.get("vs_previous") or {}
    if not versus.get("skill_changes") and not review.get("skills"):
        return NO_SKILLS
    if not versus:
        return "First milestone reviewed (or no previous checkpoint given): nothing to compare with yet."
    return change_sentence(versus.get("skill_changes") or [], versus.get("previous"))


def quality_summary(metrics: dict | None) -> dict:
    """Overall judge score with its 95% CI, score per category and the best sampler setting of a quality review."""
    out = {"overall": None, "overall_low": None, "overall_high": None, "ceiling": None, "categories": {}, "best": None,
           "skills": {}}
    if not metrics:
        return out
    out["skills"] = skills_by_name(metrics.get("skills"))
    ci = metrics.get("overall_ci") or [None, None]
    out.update(overall=metrics.get("overall"), overall_low=ci[0], overall_high=ci[1], ceiling=metrics.get("ceiling"))
    out["categories"] = {row["category"]: row.get("accuracy") for row in metrics.get("scores") or []
                         if isinstance(row, dict) and row.get("category") not in (None, "overall")}
    best = (metrics.get("best_settings") or {}).get("best")
    if isinstance(best, dict):
        out["best"] = (f"{best.get('scheduler')}, {best.get('steps')} steps, guidance {best.get('guidance')}: "
                       f"{best.get('accuracy', 0):.2f}")
    return out
