"""Loss diagnosis on synthetic metrics.jsonl logs: each verdict (the schedule's state and the skill curve included),
deduplication of resumed runs, ETA, plots, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.figure import Figure
from t2ilab.review.diagnose import (
    VERDICTS,
    MetricsError,
    diagnose,
    diagnose_run,
    eta,
    format_duration,
    main,
    read_metrics,
)
from t2ilab.review.judge import wilson_interval
from t2ilab.review.skill_curve import skill_curve

LOGS_PER_EPOCH = 5
STEPS_PER_EPOCH = 50


def records(val_loss, train_loss=None, *, first_epoch=1, seed=0, ema=True, epoch_seconds=10.0, num_epochs=200,
            lr=1e-4, noise=0.02, spikes=(), nan_epochs=()):
    """metrics.jsonl records for epochs first_epoch.. with the given per-epoch losses (noisy per log interval);
    `lr` is a number or a function of the global step."""
    rng = np.random.default_rng(seed)
    lr_of = lr if callable(lr) else (lambda step: lr)
    train_loss = val_loss if train_loss is None else train_loss
    out = []
    for i, (v, t) in enumerate(zip(val_loss, train_loss)):
        epoch = first_epoch + i
        for j in range(LOGS_PER_EPOCH):
            step = (epoch - 1) * STEPS_PER_EPOCH + (j + 1) * STEPS_PER_EPOCH // LOGS_PER_EPOCH
            loss = t * (1 + noise * rng.standard_normal())
            loss = loss * 4 if (epoch, j) in spikes else loss
            loss = math.nan if epoch in nan_epochs else loss
            bins = [loss * (2 - k / 10) for k in range(10)]
            out.append({"type": "train", "epoch": epoch, "step": step, "loss": loss, "lr": lr_of(step), "grad_norm": 0.8,
                        "samples_per_s": 400.0, "time": 1e9 + epoch * epoch_seconds, "loss_bins": bins})
        out.append({"type": "val", "epoch": epoch, "step": epoch * STEPS_PER_EPOCH, "val_loss": v,
                    "val_loss_ema": v * 0.98 if ema else None, "val_loss_bins": [v * (2 - k / 10) for k in range(10)],
                    "val_loss_ema_bins": None, "train_loss": t, "epoch_seconds": epoch_seconds,
                    "samples_per_s": 400.0, "num_epochs": num_epochs, "lr": lr_of(epoch * STEPS_PER_EPOCH),
                    "time": 1e9 + epoch * epoch_seconds})
    return out


def write(tmp_path, recs, tail: str = ""):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + tail)
    return tmp_path


def decaying(n, seed=0, sigma=5e-4):
    epochs = np.arange(1, n + 1)
    return 0.05 + 0.1 * np.exp(-epochs / 30) + sigma * np.random.default_rng(seed).standard_normal(n)


def flat(n, seed=0, sigma=5e-4, level=0.05):
    return level + sigma * np.random.default_rng(seed).standard_normal(n)


def cosine(num_epochs, peak=1e-4):
    """The lr of a cosine over num_epochs without warm-up (diffusers' shape), by global step."""
    return lambda step: peak * 0.5 * (1 + math.cos(math.pi * min(step / (num_epochs * STEPS_PER_EPOCH), 1.0)))


def skills_at(scores: dict[int, dict[str, float]], n: int = 100) -> dict[int, dict[str, dict]]:
    """epoch -> skill -> {accuracy, ci_low, ci_high, n} as a quality review stores them, from plain accuracies."""
    out = {}
    for epoch, by_skill in scores.items():
        out[epoch] = {}
        for skill, accuracy in by_skill.items():
            low, high = wilson_interval(round(accuracy * n), n)
            out[epoch][skill] = {"accuracy": accuracy, "ci_low": low, "ci_high": high, "n": n}
    return out


RISING = {20: {"color": 0.45, "shape": 0.30}, 30: {"color": 0.62, "shape": 0.31}, 40: {"color": 0.81, "shape": 0.32}}
FLAT = {20: {"color": 0.60, "shape": 0.30}, 30: {"color": 0.61, "shape": 0.31}, 40: {"color": 0.60, "shape": 0.32}}


def run(tmp_path, recs, **kwargs):
    train, val = read_metrics(write(tmp_path, recs))
    return diagnose(train, val, **kwargs)


def test_still_improving_recommends_continuing_to_num_epochs_with_eta(tmp_path):
    d = run(tmp_path, records(decaying(40)))
    assert d.verdict == "still_improving", d.summary
    assert d.evidence["val_ci_high"] < 0 and d.evidence["val_series"] == "val_loss_ema"
    assert "continue training to 200 epochs" in d.recommendation and "160 epochs left" in d.recommendation


def test_noise_free_decay_is_still_improving(tmp_path):
    # Residuals of a line through a smooth curve are autocorrelated; the CI correction must not erase the trend.
    d = run(tmp_path, records(decaying(40, sigma=0.0), noise=0.0))
    assert d.verdict == "still_improving" and d.evidence["val_rho"] > 0


def test_early_fast_decay_is_still_improving_not_a_plateau(tmp_path):
    # The demo's validation loss (EMA) over its first 12 epochs: lower every epoch, yet a line through epochs 3-12
    # leaves U-shaped residuals whose CI included zero ("plateau"). The recent half of the run decides.
    val = [0.0681, 0.0386, 0.0298, 0.0253, 0.0226, 0.0208, 0.0195, 0.0184, 0.0175, 0.0169, 0.0163, 0.0158]
    d = run(tmp_path, records(val, num_epochs=21))
    assert d.verdict == "still_improving", d.summary
    assert d.evidence["window_epochs"] == 6


def test_still_improving_past_num_epochs_recommends_going_further(tmp_path):
    d = run(tmp_path, records(decaying(40), num_epochs=40))
    assert d.verdict == "still_improving" and "continue training to 60 epochs" in d.recommendation


def test_plateau_recommends_half_the_learning_rate(tmp_path):
    d = run(tmp_path, records(flat(40)))
    assert d.verdict == "plateau", d.summary
    assert d.evidence["val_ci_low"] < 0 < d.evidence["val_ci_high"]
    assert "lower learning rate, e.g. 5e-5 (half of 1e-4)" in d.recommendation


def test_plateau_at_decayed_learning_rate_recommends_data(tmp_path):
    recs = records(flat(40))
    for r in recs[:50]:
        r["lr"] = 2e-3  # the peak; the schedule has since decayed to 1e-4
    d = run(tmp_path, recs)
    assert d.verdict == "plateau" and "add data" in d.recommendation


def test_nan_loss_is_unstable(tmp_path):
    d = run(tmp_path, records(decaying(40), nan_epochs=(30,)))
    assert d.verdict == "unstable" and d.evidence["nan_seen"] and d.evidence["first_nan_epoch"] == 30
    assert "before epoch 30" in d.recommendation and "lower learning rate" in d.recommendation


def test_spikes_are_unstable_but_a_single_one_is_not(tmp_path):
    spikes = ((33, 1), (35, 3), (38, 2), (39, 4))
    d = run(tmp_path, records(flat(40), spikes=spikes))
    assert d.verdict == "unstable" and d.evidence["spikes"] == 4
    assert "lower learning rate" in d.recommendation and "spikes" in d.recommendation
    assert run(tmp_path, records(flat(40), spikes=spikes[:1])).verdict == "plateau"


def test_training_and_validation_rising_is_unstable(tmp_path):
    rising = 0.05 * 1.03 ** np.arange(40)
    d = run(tmp_path, records(rising))
    assert d.verdict == "unstable" and "both rising" in d.recommendation


def test_validation_rising_while_training_falls_is_overfitting(tmp_path):
    epochs = np.arange(1, 41)
    val = 0.05 + 0.0004 * np.maximum(epochs - 15, 0) + flat(40, sigma=2e-4, level=0)
    d = run(tmp_path, records(val, train_loss=decaying(40, seed=1)))
    assert d.verdict == "overfitting", d.summary
    assert d.evidence["val_ci_low"] > 0 and d.evidence["train_ci_high"] < 0
    assert d.evidence["best_epoch"] <= 16 and f"epoch {d.evidence['best_epoch']}," in d.recommendation
    assert "add data or regularise" in d.recommendation


def test_few_epochs_are_too_early(tmp_path):
    d = run(tmp_path, records(decaying(3)))
    assert d.verdict == "too_early" and "continue training" in d.recommendation


def test_ci_narrows_with_more_epochs_and_less_noise(tmp_path):
    def width(n, sigma, last_k):
        ev = run(tmp_path, records(flat(n, sigma=sigma)), last_k=last_k).evidence
        return ev["val_ci_high"] - ev["val_ci_low"]

    assert width(40, 5e-4, 40) < width(40, 5e-4, 10)
    assert width(40, 1e-4, 10) < width(40, 5e-4, 10)


def test_val_loss_used_when_ema_disabled(tmp_path):
    d = run(tmp_path, records(decaying(40), ema=False))
    assert d.evidence["val_series"] == "val_loss" and d.verdict == "still_improving"


def test_sampler_gap_recommends_sampler_sweep(tmp_path):
    quality = {"overall": 0.4, "ceiling": 0.99, "best_sampler_overall": 0.8}
    d = run(tmp_path, records(flat(40)), quality=quality)
    assert d.verdict == "plateau" and "sampler settings are the problem" in d.recommendation
    no_gap = run(tmp_path, records(flat(40)), quality=quality | {"best_sampler_overall": 0.42})
    assert "lower learning rate" in no_gap.recommendation
    good = run(tmp_path, records(flat(40)), quality={"overall": 0.93, "ceiling": 0.99, "best_sampler_overall": 0.95})
    assert good.recommendation.startswith("stop here")


def test_resumed_log_keeps_the_last_attempt(tmp_path):
    first = records(flat(30, level=0.07))  # crashed after epoch 30; resumed from the epoch-20 checkpoint
    second = records(flat(5, level=0.05), first_epoch=21)  # ... and has reached epoch 25 so far
    train, val = read_metrics(write(tmp_path, first + second))
    assert val["epoch"].tolist() == list(range(1, 26))  # epochs 26-30 of the first attempt are superseded
    assert val.set_index("epoch").loc[21:, "val_loss"].max() < 0.06 < val.set_index("epoch").loc[:20, "val_loss"].min()
    assert train["step"].is_unique and train["step"].is_monotonic_increasing
    assert train.attrs["resumes"] == 1


def test_duplicated_epochs_last_wins(tmp_path):
    recs = records(flat(10))
    again = records(flat(1, level=0.5), first_epoch=10)
    train, val = read_metrics(write(tmp_path, recs + again))
    assert len(val) == 10 and val["val_loss"].iloc[-1] == pytest.approx(again[-1]["val_loss"])
    assert len(train) == 10 * LOGS_PER_EPOCH


def test_truncated_last_line_and_nan_tokens_are_handled(tmp_path):
    recs = records(decaying(6), nan_epochs=(6,))
    train, val = read_metrics(write(tmp_path, recs, tail='{"type": "val", "epoch": 7, "val_lo'))
    assert train.attrs["skipped_lines"] == 1 and len(val) == 6
    assert train["loss"].isna().sum() == LOGS_PER_EPOCH  # the NaN token parsed as a float NaN


def test_missing_or_empty_log_names_the_path(tmp_path):
    with pytest.raises(MetricsError, match=str(tmp_path)):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(MetricsError, match="no train or val records"):
        read_metrics(tmp_path)


def test_eta_from_measured_epoch_time(tmp_path):
    train, val = read_metrics(write(tmp_path, records(flat(118), epoch_seconds=10.0)))
    t = eta(train, val)
    assert (t["epochs_done"], t["target_epochs"], t["epochs_left"]) == (118, 200, 82)
    assert t["seconds_per_epoch"] == 10.0 and t["seconds_left"] == 820.0
    assert t["text"] == "82 epochs left ≈ 13 min 40 s at 10 s/epoch (measured over the last 10 epochs)"
    assert eta(train, val, target_epochs=118)["epochs_left"] == 0
    assert format_duration(82 * 61) == "1 h 23 min"


def test_eta_falls_back_to_wall_clock(tmp_path):
    recs = records(flat(20), epoch_seconds=30.0)
    for r in recs:
        r.pop("epoch_seconds", None)
    train, val = read_metrics(write(tmp_path, recs))
    t = eta(train, val)
    assert t["seconds_per_epoch"] == 30.0 and t["source"] == "wall_clock"


def test_plot_training_returns_figure_and_saves_png(tmp_path):
    train, val = read_metrics(write(tmp_path, records(decaying(20), nan_epochs=(5,))))
    fig = plot_training_(train, val, tmp_path / "loss.png")
    assert isinstance(fig, Figure) and len(fig.axes) >= 6
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def plot_training_(train, val, path):
    from t2ilab.review.diagnose import plot_training

    return plot_training(train, val, path)


def test_diagnose_run_is_json_safe(tmp_path):
    out = diagnose_run(write(tmp_path, records(decaying(20), nan_epochs=(3,))))
    json.dumps(out, allow_nan=False)
    assert out["verdict"] == "unstable" and out["log"]["val_points"] == 20 and out["eta"]["epochs_left"] == 180


def test_main_prints_verdict_and_plots(tmp_path, capsys):
    write(tmp_path, records(decaying(40)))
    assert main([str(tmp_path), "--plot", str(tmp_path / "p.png")]) == 0
    assert "verdict: still_improving" in capsys.readouterr().out and (tmp_path / "p.png").exists()


def test_main_on_missing_dir_returns_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_diagnose_command_prints_verdict_and_rejects_a_missing_dir(tmp_path, capsys):
    from t2ilab import cli

    write(tmp_path, records(decaying(40)))
    assert cli.main(["diagnose", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "verdict: still_improving" in out and "recommendation: continue training" in out
    assert cli.main(["diagnose", str(tmp_path / "nope")]) == 2
    assert "no metrics log" in capsys.readouterr().err


def test_every_verdict_has_a_test():
    names = {name[5:] for name in globals() if name.startswith("test_")}
    tested = {"still_improving": "still_improving", "plateau": "plateau", "unstable": "unstable",
              "overfitting": "overfitting", "too_early": "too_early", "decayed_still_learning": "decayed"}
    assert set(tested) == set(VERDICTS)
    assert all(any(word in name for name in names) for word in tested.values())


def test_decayed_cosine_with_rising_skills_recommends_a_warm_restart_with_its_rate(tmp_path):
    # The case: the loss is flat, the cosine has reached ~0, and colour still rises significantly.
    d = run(tmp_path, records(flat(40), num_epochs=40, lr=cosine(40)), skills=skill_curve(skills_at(RISING)))
    assert d.verdict == "decayed_still_learning", d.summary
    assert d.evidence["schedule_decayed"] and d.evidence["schedule_fraction_of_peak"] < 0.05
    assert d.evidence["skills_rising"] == ["color"] and d.evidence["skills_flat"] == ["shape"]
    assert d.evidence["schedule_restart_rate"] == pytest.approx(5e-5)  # half the run's peak, as arms' restart arm
    text = d.recommendation
    assert "training.lr_restart=5e-5" in text and "training.num_epochs=60" in text, text
    assert "color 0.45 → 0.81 (epochs 20 → 40" in text and "won't help" not in text
    assert "t2ilab train --config CONFIG --resume latest" in text and "20 epochs left" in text


def test_decayed_cosine_with_falling_loss_and_no_reports_still_recommends_a_restart(tmp_path):
    # No reports folder: the skills are unknown, and the falling validation loss alone is evidence of learning.
    d = run(tmp_path, records(decaying(40), num_epochs=40, lr=cosine(40)))
    assert d.verdict == "decayed_still_learning" and not d.evidence["skills_known"]
    assert "training.lr_restart=5e-5" in d.recommendation and "still falls" in d.recommendation
    assert "no skill curve to confirm it" in d.recommendation


def test_decayed_flat_loss_says_wont_help_only_when_the_skills_are_flat_too(tmp_path):
    recs = records(flat(40), num_epochs=40, lr=cosine(40))
    flat_skills = run(tmp_path, recs, skills=skill_curve(skills_at(FLAT)))
    assert flat_skills.verdict == "plateau"
    assert "won't help" in flat_skills.recommendation and "add data" in flat_skills.recommendation
    unknown = run(tmp_path, recs)  # no skill curve: neither "won't help" nor a restart claimed as needed
    assert unknown.verdict == "plateau" and "won't help" not in unknown.recommendation
    assert "if skills still rise" in unknown.recommendation and "training.lr_restart=5e-5" in unknown.recommendation


def test_plateau_with_rising_skills_keeps_training_instead_of_lowering_the_rate(tmp_path):
    d = run(tmp_path, records(flat(40)), skills=skill_curve(skills_at(RISING)))  # constant 1e-4: not decayed
    assert d.verdict == "plateau" and not d.evidence["schedule_decayed"]
    assert d.recommendation.startswith("continue training to 200 epochs") and "color 0.45 → 0.81" in d.recommendation
    assert "lower learning rate" not in d.recommendation


def test_diagnose_run_and_cli_read_the_reports_folder(tmp_path, capsys):
    run_dir, reports = tmp_path / "run", tmp_path / "reports" / "run"
    run_dir.mkdir()
    write(run_dir, records(flat(40), num_epochs=40, lr=cosine(40)))
    for epoch, skills in skills_at(RISING).items():
        (reports / f"epoch-{epoch:04d}").mkdir(parents=True)
        sidecar = {"notebook": "quality_review", "status": "ok", "metrics": {"skills": skills}}
        (reports / f"epoch-{epoch:04d}" / "quality_review.metrics.json").write_text(json.dumps(sidecar))
    out = diagnose_run(run_dir, reports_dir=reports)
    json.dumps(out, allow_nan=False)
    assert out["verdict"] == "decayed_still_learning" and [s["skill"] for s in out["skills"]] == ["color", "shape"]
    assert diagnose_run(run_dir, reports_dir=tmp_path / "none")["verdict"] == "plateau"  # skills unknown, loss flat
    assert main([str(run_dir), "--reports-dir", str(reports)]) == 0
    printed = capsys.readouterr().out
    assert "verdict: decayed_still_learning" in printed and "training.lr_restart=5e-5" in printed
    assert "schedule: learning-rate schedule at 0.0% of its peak" in printed and "skills still rising" in printed
