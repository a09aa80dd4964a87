"""Skill tables and sentences for readers, the readable review tables, and the index's skills section and plot."""

import re

import pytest
from PIL import Image
from t2ilab import readable
from t2ilab.reporting import report_index, review_tables
from t2ilab.review import skill_report


def skills(**scores):
    """{skill: (hits, n)} -> the records score_checkpoint writes (accuracy with its Wilson interval)."""
    from t2ilab.review.judge import wilson_interval

    rows = []
    for name, (hits, n) in scores.items():
        low, high = wilson_interval(hits, n)
        rows.append({"skill": name, "n": n, "accuracy": hits / n, "ci_low": low, "ci_high": high})
    return rows


def test_scores_read_as_score_and_interval_and_nothing_reads_as_a_dash():
    assert readable.score(0.384, 0.1412, 0.6901) == "0.38 [0.14, 0.69]"
    assert readable.score(0.5) == "0.50"
    for nothing in (None, float("nan"), float("inf"), "n/a"):
        assert readable.score(nothing) == readable.number(nothing) == "–"
    assert readable.number(2.03e-14, 3) == "0.000" and readable.signed(0.361, 0.2249, 0.4812) == "+0.36 [+0.22, +0.48]"


def test_skills_table_orders_skills_and_says_what_each_checks():
    shown = skill_report.skills_table(skills(binding=(1, 10), color=(81, 100), shape=(30, 100)))
    table = shown.frame
    assert "what it checks" in shown._repr_html_() and not repr(shown).lstrip().startswith("0"), "no row numbers"
    assert list(table.columns) == ["skill", "score [95% CI]", "images judged", "what it checks"]
    assert list(table["skill"]) == ["color", "shape", "binding"]
    assert re.fullmatch(r"0\.81 \[0\.\d\d, 0\.\d\d\]", table["score [95% CI]"][0])
    assert "whatever the shape" in table["what it checks"][0]
    assert isinstance(skill_report.skills_table(None), readable.Note)


def test_a_skill_rises_only_when_its_interval_clears_zero():
    before, now = skills(color=(45, 100), shape=(30, 100), count=(20, 100)), skills(color=(81, 100), shape=(33, 100), count=(5, 100))
    changes = {c["skill"]: c for c in skill_report.skill_changes(now, before)}
    assert changes["color"]["change"] == "rose" and changes["color"]["ci_low"] > 0
    assert changes["shape"]["change"] == "no clear change" and changes["shape"]["ci_low"] < 0 < changes["shape"]["ci_high"]
    assert changes["count"]["change"] == "fell"
    sentence = skill_report.change_sentence(list(changes.values()), 12)
    assert sentence.startswith("Since epoch 12: color rose (0.45 → 0.81, +0.36 [")
    assert "count fell (0.20 → 0.05" in sentence and sentence.endswith("shape: no clear change at this N.")


def test_a_sentence_with_nothing_moved_says_so_once():
    same = skills(color=(5, 10), shape=(3, 10))
    assert skill_report.change_sentence(skill_report.skill_changes(same, same), 7) == (
        "Since epoch 7: no skill changed clearly at this N (color, shape).")


def test_review_sentence_for_a_first_milestone_and_for_folder_data():
    assert "nothing to compare" in skill_report.review_sentence({"skills": skills(color=(1, 2))})
    assert skill_report.review_sentence({"skills": None}) == skill_report.NO_SKILLS


def test_review_tables_are_readable_and_empty_sections_say_why():
    review = {"scores": [{"category": "colors", "n": 200, "accuracy": 0.2, "ci_low": 0.15, "ci_high": 0.26, "ceiling": 1.0}],
              "sweep": [{"scheduler": "ddim", "steps": 10, "guidance": 3.0, "n": 48, "accuracy": 0.1, "ci_low": 0.04,
                         "ci_high": 0.22, "seconds_per_image": 0.0123},
                        {"scheduler": "dpmsolver++", "steps": 10, "guidance": 3.0, "n": 48, "accuracy": 0.3,
                         "ci_low": 0.2, "ci_high": 0.44, "seconds_per_image": 0.0101}],
              "guide_claims": None, "prompts": None}
    scores = review_tables.score_table(review).frame
    assert scores.iloc[0].to_dict() == {"category": "colors", "score [95% CI]": "0.20 [0.15, 0.26]",
                                        "judge on real images": "1.00", "images": 200}
    sweep = review_tables.sweep_table(review).frame
    assert list(sweep["sampler"]) == ["dpmsolver++", "ddim"] and list(sweep["ms per image"]) == ["10.1", "12.3"]
    for table, why in ((review_tables.claims_table(review), "did not run"),
                       (review_tables.prompts_table(review), "prompt_pairs"),
                       (review_tables.sweep_table({"sweep": None}), "-p sweep_schedulers"),
                       (review_tables.score_table({"scores": None}), "shapes data set")):
        assert isinstance(table, readable.Note) and why in str(table) and "Empty DataFrame" not in repr(table)
    text = scores.to_string() + sweep.to_string()
    assert "nan" not in text.lower() and "e-" not in text


def rows_with(*milestones):
    """Index rows as collect_rows makes them: (epoch, skills records, overall, ci)."""
    out = []
    for epoch, records, overall, ci in milestones:
        summary = skill_report.quality_summary({"skills": records, "overall": overall, "overall_ci": ci, "ceiling": 0.99,
                                                "scores": []})
        out.append({"epoch": epoch, "val_loss": 0.3 - epoch / 100, "val_loss_ema": None, **summary})
    return out


def test_index_skill_rows_carry_scores_and_the_change_sentence():
    rows = rows_with((4, skills(color=(40, 100), shape=(10, 100)), 0.03, [0.01, 0.06]),
                     (8, skills(color=(80, 100), shape=(12, 100)), 0.06, [0.03, 0.1]))
    head, table = report_index.skill_rows(rows)
    assert head == ["epoch", "color", "shape", "what changed"]
    assert table[0][0] == "4" and table[0][-1] == "first milestone with skill scores"
    assert table[1][1].startswith("0.80 [") and table[1][-1].startswith("Since epoch 4: color rose")
    assert "shape: no clear change" in table[1][-1]


def test_index_plot_fits_its_axes_to_a_small_change(tmp_path):
    rows = rows_with((4, skills(color=(40, 100)), 0.037, [0.02, 0.06]), (8, skills(color=(80, 100)), 0.075, [0.05, 0.1]))
    assert report_index._padded([0.02, 0.05], [0.06, 0.1]) == pytest.approx((0.0, 0.145))  # not 0 to 1
    low, high = report_index._padded([0.40], [0.42])
    assert high - low == pytest.approx(0.15) and 0 < low < 0.4
    path = report_index.plot_quality_vs_epoch(rows, tmp_path / "plot.png")
    assert Image.open(path).width >= 900  # three panels: skills, strict overall, validation loss


def test_index_without_reviews_says_how_to_get_skills(tmp_path):
    run, reports = tmp_path / "run", tmp_path / "reports"
    run.mkdir()
    reports.mkdir()
    report_index.write_index(reports, run, {})
    md, page = (reports / "index.md").read_text(), (reports / "index.html").read_text()
    assert "## Skills, each judged on its own" in md and report_index.NO_SKILLS in md and report_index.NO_SKILLS in page
    assert "nan" not in md.lower()
