"""The diagnosis' two new inputs: the LR schedule state (against diffusers' cosine and a real tiny run's logged rate)
and the skill curve read from milestone quality reviews (against Newcombe's interval computed directly)."""

from __future__ import annotations

import json
import math

import pytest
from t2ilab.intervals import difference_interval
from t2ilab.review.schedule_state import lr_at, restart_rate, schedule_state
from t2ilab.review.skill_curve import curve_sentence, milestone_skills, skill_curve
from t2ilab.training.checkpoint import list_checkpoints
from t2ilab.training.metrics_log import read_metrics
from t2ilab.training.train import train


def test_lr_at_is_the_cosine_of_the_segment_from_its_start_step():
    segment = {"start_step": 100, "base_lr": 1e-4, "warmup": 0, "schedule": "cosine", "total_steps": 300}
    for step in (100, 150, 200, 299):
        expected = 1e-4 * 0.5 * (1 + math.cos(math.pi * (step - 100) / 200))
        assert lr_at(segment, step) == pytest.approx(expected, rel=1e-9)
    warm = segment | {"start_step": 0, "warmup": 10}
    assert lr_at(warm, 5) == pytest.approx(0.5e-4) and lr_at(segment | {"schedule": "constant"}, 290) == 1e-4


def test_restart_rate_is_half_the_peak_unless_the_run_already_restarted_there():
    assert restart_rate(1e-4) == 5e-5
    assert restart_rate(1e-4, lr_restart=5e-5) == 2.5e-5  # the same value again would continue that segment
    assert restart_rate(None) is None


def test_schedule_state_of_a_tiny_cosine_run_matches_its_log_and_get_scheduler(tiny_config, tmp_path):
    cfg = tiny_config("training.lr_scheduler=cosine")
    train(cfg, progress="none")
    out = tmp_path / "run"
    train_log, val_log = read_metrics(out)
    (mid, _), (end, _) = list_checkpoints(out)[0], list_checkpoints(out)[-1]
    at_mid = schedule_state(train_log, val_log, mid)
    assert at_mid.source == "logged" and at_mid.schedule == "cosine" and at_mid.peak_lr == 1e-3
    assert at_mid.lr == pytest.approx(0.5e-3, rel=1e-6)  # half-way through a cosine without warm-up
    assert at_mid.steps_left == at_mid.global_step and not at_mid.decayed
    # Without the logged rate, diffusers' get_scheduler for the saved segment gives the same number.
    recomputed = schedule_state(train_log.assign(lr=math.nan), val_log.assign(lr=math.nan), mid)
    assert recomputed.source == "recomputed" and recomputed.lr == pytest.approx(at_mid.lr, rel=1e-6)
    at_end = schedule_state(train_log, val_log, end)
    assert at_end.decayed and at_end.steps_left == 0 and at_end.fraction_of_peak < 0.05
    assert at_end.restart_rate == 5e-4 and "decayed to ~0" in at_end.text()


def test_constant_schedule_never_counts_as_decayed(tiny_config, tmp_path):
    train(tiny_config("training.num_epochs=2"), progress="none")
    train_log, val_log = read_metrics(tmp_path / "run")
    state = schedule_state(train_log, val_log, list_checkpoints(tmp_path / "run")[-1][0])
    assert state.schedule == "constant" and state.fraction_of_peak == 1.0 and not state.decayed


def _review(folder, skills, status="ok"):
    folder.mkdir(parents=True)
    (folder / "quality_review.metrics.json").write_text(json.dumps({"status": status, "metrics": {"skills": skills}}))


def _skill(hits, n=100):
    return {"accuracy": hits / n, "ci_low": None, "ci_high": None, "n": n}


def test_skill_curve_rises_only_where_newcombe_excludes_zero(tmp_path):
    _review(tmp_path / "epoch-0010", {"color": _skill(45), "shape": _skill(30)})
    _review(tmp_path / "epoch-0020", {"color": _skill(62), "shape": _skill(31)})
    _review(tmp_path / "epoch-0030", {"color": _skill(81), "shape": _skill(33)})
    _review(tmp_path / "epoch-0040", {"color": _skill(99)}, status="failed")  # a failed review is not read
    _review(tmp_path / "epoch-0050", {"color": _skill(10)})  # after the diagnosed epoch
    by_epoch = milestone_skills(tmp_path, until_epoch=30)
    assert sorted(by_epoch) == [10, 20, 30]
    color, shape = skill_curve(by_epoch)
    d, low, high = difference_interval(81, 100, 45, 100)
    assert (color["first"], color["last"], color["overall_difference"]) == (0.45, 0.81, pytest.approx(d))
    assert (color["overall_ci_low"], color["overall_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert low > 0 and color["overall_change"] == "rose" and color["still_rising"]
    assert color["recent_change"] == ("rose" if difference_interval(81, 100, 62, 100)[1] > 0 else "no clear change")
    assert shape["overall_change"] == "no clear change" and not shape["still_rising"]
    assert "still rising (Newcombe 95 %): color 0.45 → 0.81" in curve_sentence([color, shape])


def test_one_milestone_or_none_gives_no_rise_and_says_why(tmp_path):
    assert milestone_skills(tmp_path / "missing") == {}
    assert "no quality reviews in" in curve_sentence([], "reports/run")
    _review(tmp_path / "epoch-0010", {"color": _skill(45)})
    curve = skill_curve(milestone_skills(tmp_path))
    assert not curve[0]["still_rising"] and "a curve needs two" in curve_sentence(curve)


def test_the_recommended_restart_command_runs_and_starts_the_new_segment_at_its_rate(tiny_config, tmp_path):
    import shlex

    from t2ilab.review.diagnose import diagnose_run
    from t2ilab.train_cli import main as train_main

    train(tiny_config("training.lr_scheduler=cosine"), progress="none")
    reports = tmp_path / "reports" / "run"
    _review(reports / "epoch-0002", {"color": _skill(45)})
    _review(reports / "epoch-0004", {"color": _skill(81)})
    out = diagnose_run(tmp_path / "run", reports_dir=reports)
    assert out["verdict"] == "decayed_still_learning", out["summary"]
    command = shlex.split(out["recommendation"].split("`")[-2])  # the last `...` in the text is the command
    assert command[:2] == ["t2ilab", "train"] and "training.lr_restart=5e-4" in command
    assert train_main(command[2:] + ["--progress", "none"]) == 0
    state = json.loads((tmp_path / "run" / "checkpoint-epoch-0010" / "training_state" / "state.json").read_text())
    assert state["lr_segment"]["base_lr"] == 5e-4 and state["lr_segment"]["start_step"] == 12
