"""The quality review's tables as a reader sees them: a handful of columns with plain headers, each score with its
95 % interval, and one sentence (why, and how to turn it on) where a section has nothing to show.
"""

from __future__ import annotations

import pandas as pd

from t2ilab import readable
from t2ilab.readable import Note, Table, score, table_or_note

NO_SCORES = ("No judge scores: the exact judge reads the shapes data set only; folder data is compared by "
             "distances below.")
NO_SWEEP = ("No sampler sweep in this review (it was switched off or the data is not the shapes set): run the "
            "notebook with -p sweep_schedulers '[\"dpmsolver++\", \"ddim\"]' or `t2ilab report` without --quick.")
NO_CLAIMS = ("The guide's claims (100 vs 50 steps, DDIM vs DDPM) are answered from the sampler sweep, which did not "
             "run here: sweep at least steps [50, 100] and samplers ddim and ddpm to answer them.")
NO_PROMPTS = ("No short-vs-detailed prompt check: it needs the shapes data set and a review prompts file with "
              "prompt_pairs (configs/review_prompts.yaml).")


def score_table(review: dict) -> Table | Note:
    """Category, judge score [95% CI], the judge on real renders (ceiling), images judged."""
    rows = [{"category": r["category"], "score [95% CI]": score(r.get("accuracy"), r.get("ci_low"), r.get("ci_high")),
             "judge on real images": readable.number(r.get("ceiling")), "images": r.get("n")}
            for r in review.get("scores") or []]
    return table_or_note(rows, NO_SCORES)


def sweep_table(review: dict) -> Table | Note:
    """The sampler sweep, best first (ties: faster first): sampler, steps, guidance, score, milliseconds per image."""
    sweep = pd.DataFrame(review.get("sweep") or [])
    if sweep.empty:
        return Note(NO_SWEEP)
    sweep = sweep.sort_values(["accuracy", "seconds_per_image"], ascending=[False, True], ignore_index=True)
    return Table(pd.DataFrame([{"sampler": r["scheduler"], "steps": int(r["steps"]), "guidance": f"{r['guidance']:g}",
                          "score [95% CI]": score(r["accuracy"], r["ci_low"], r["ci_high"]),
                          "ms per image": readable.milliseconds(r["seconds_per_image"]), "images": int(r["n"])}
                         for r in sweep.to_dict(orient="records")]))


def claims_table(review: dict) -> Table | Note:
    """One row per claim of the old guide: question, answer, difference with its 95 % interval, images per cell."""
    claims = (review.get("guide_claims") or {}).values()
    rows = [{"question": c.get("question"), "answer": c.get("verdict"),
             "difference [95% CI]": readable.signed(c.get("difference"), c.get("ci_low"), c.get("ci_high")),
             "images per cell": c.get("n_per_cell")}
            for c in claims if c.get("verdict") != "not measured"]
    return table_or_note(rows, NO_CLAIMS)


def prompts_table(review: dict) -> Table | Note:
    """Short vs detailed prompts: the prompt, what the judge checks, unknown words, score on its own claim."""
    rows = [{"prompt": r["prompt"], "kind": r["role"], "judged as": r.get("judged_as") or readable.DASH,
             "unknown words": ", ".join(r.get("unknown_words") or []) or readable.DASH,
             "score [95% CI]": score(r.get("accuracy"), r.get("ci_low"), r.get("ci_high")), "images": r.get("n")}
            for r in review.get("prompts") or []]
    return table_or_note(rows, NO_PROMPTS)
