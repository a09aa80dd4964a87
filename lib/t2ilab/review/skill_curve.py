"""A run's skill curve from its milestone quality reviews: per skill the first and last score, and whether it rose
(the Newcombe 95 % interval of the difference excludes zero, see intervals.py) since the previous milestone and overall.
"""

from __future__ import annotations

from pathlib import Path

from t2ilab import readable
from t2ilab.files import read_json
from t2ilab.review import skill_report
from t2ilab.review.judge import SKILLS

REVIEW_SIDECAR = "quality_review.metrics.json"
NO_CURVE = ("no skill scores to read: no quality reviews in {where} (run `t2ilab report --run OUTPUT_DIR`; the "
            "judge reads the shapes data set only)")


def milestone_skills(run_reports_dir: str | Path, until_epoch: int | None = None) -> dict[int, dict[str, dict]]:
    """epoch -> skill -> {accuracy, ci_low, ci_high, n} from reports/<run>/epoch-NNNN/quality_review.metrics.json."""
    root = Path(run_reports_dir)
    out = {}
    for folder in sorted(root.glob("epoch-*")) if root.is_dir() else []:
        if not folder.name[6:].isdigit() or (until_epoch is not None and int(folder.name[6:]) > until_epoch):
            continue
        record = read_json(folder / REVIEW_SIDECAR)
        if record and record.get("status", "ok") == "ok":
            skills = skill_report.quality_summary(record.get("metrics"))["skills"]
            if skills:
                out[int(folder.name[6:])] = skills
    return out


def skill_curve(by_epoch: dict[int, dict[str, dict]]) -> list[dict]:
    """Per skill: first/last epoch and score, the change since the previous milestone and since the first, and
    `still_rising`: it rose since the previous milestone, or rose overall without a downward last step."""
    epochs = sorted(by_epoch)
    judged = {name for e in epochs for name in by_epoch[e]}
    names = [s for s in SKILLS if s in judged] + sorted(judged - set(SKILLS))
    rows = []
    for name in names:
        seen = [e for e in epochs if name in by_epoch[e]]
        first, last = by_epoch[seen[0]][name], by_epoch[seen[-1]][name]
        row = {"skill": name, "first_epoch": seen[0], "first": first.get("accuracy"), "last_epoch": seen[-1],
               "last": last.get("accuracy"), "last_ci_low": last.get("ci_low"), "last_ci_high": last.get("ci_high"),
               "n": last.get("n"), "previous_epoch": seen[-2] if len(seen) > 1 else None}
        for label, before in (("recent", seen[-2] if len(seen) > 1 else None), ("overall", seen[0])):
            change = (skill_report.skill_changes({name: last}, {name: by_epoch[before][name]})
                      if before is not None and before != seen[-1] else [])
            c = change[0] if change else {}
            row |= {f"{label}_change": c.get("change"), f"{label}_difference": c.get("difference"),
                    f"{label}_ci_low": c.get("ci_low"), f"{label}_ci_high": c.get("ci_high")}
        row["still_rising"] = row["recent_change"] == "rose" or (
            row["overall_change"] == "rose" and (row["recent_difference"] or 0) >= 0)
        rows.append(row)
    return rows


def rising(curve: list[dict]) -> list[dict]:
    """The rows of skills that still rise."""
    return [row for row in curve if row["still_rising"]]


def describe(row: dict) -> str:
    """'color 0.45 → 0.81 (epochs 7 → 21, +0.36 [+0.22, +0.48]; since epoch 12 +0.10 [+0.01, +0.19])'."""
    text = (f"{row['skill']} {readable.number(row['first'])} → {readable.number(row['last'])} (epochs "
            f"{row['first_epoch']} → {row['last_epoch']}, "
            f"{readable.signed(row['overall_difference'], row['overall_ci_low'], row['overall_ci_high'])}")
    if row["previous_epoch"] not in (None, row["first_epoch"]):
        text += (f"; since epoch {row['previous_epoch']} "
                 f"{readable.signed(row['recent_difference'], row['recent_ci_low'], row['recent_ci_high'])}")
    return text + ")"


def curve_sentence(curve: list[dict], where: str = "the reports folder") -> str:
    """One line naming the skills that still rise and those that do not (or why there is no curve)."""
    if not curve:
        return NO_CURVE.format(where=where)
    if all(row["overall_change"] is None for row in curve):
        return f"one milestone with skill scores (epoch {curve[0]['last_epoch']}): a curve needs two"
    up = rising(curve)
    flat = [row["skill"] for row in curve if not row["still_rising"]]
    parts = [f"still rising (Newcombe 95 %): {'; '.join(describe(r) for r in up)}"] if up else []
    if flat:
        parts.append(f"no clear rise at this N: {', '.join(flat)}")
    return "skills " + "; ".join(parts)


def curve_table(curve: list[dict]) -> readable.Table | readable.Note:
    """Per skill: first and last score, the changes with their intervals, still rising or not; for people."""
    rows = [{"skill": r["skill"], "first": f"{readable.number(r['first'])} (epoch {r['first_epoch']})",
             "last [95% CI]": f"{readable.score(r['last'], r['last_ci_low'], r['last_ci_high'])} (epoch {r['last_epoch']})",
             "since previous": readable.signed(r["recent_difference"], r["recent_ci_low"], r["recent_ci_high"]),
             "since first": readable.signed(r["overall_difference"], r["overall_ci_low"], r["overall_ci_high"]),
             "still rising": "yes" if r["still_rising"] else "no"} for r in curve]
    return readable.table_or_note(rows, NO_CURVE.format(where="the reports folder"))
