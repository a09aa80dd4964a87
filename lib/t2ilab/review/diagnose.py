"""Loss diagnosis: read a run's metrics.jsonl, its learning-rate schedule and its skill curve, decide whether it is
still improving, and say what to do next.

`t2ilab diagnose outputs/run [--plot loss.png]` prints the verdict, its evidence, the schedule, the skills and the ETA.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from t2ilab.config import load_config
from t2ilab.files import jsonable
from t2ilab.paths import resolve_path
from t2ilab.review import skill_curve
from t2ilab.review.plots import plot_training  # noqa: F401  (re-exported: notebooks call diagnose.plot_training)
from t2ilab.review.schedule_state import ScheduleState, fmt_lr, schedule_state
from t2ilab.review.trends import CI_LEVEL, count_spikes, direction, slope  # noqa: F401  (count_spikes re-exported)
from t2ilab.training.checkpoint import list_checkpoints, resolve_checkpoint
from t2ilab.training.metrics_log import METRICS_FILE, MetricsError, read_metrics  # noqa: F401  (re-exported)

VERDICTS = ("still_improving", "plateau", "unstable", "overfitting", "too_early", "decayed_still_learning")
MIN_VAL_POINTS = 4  # fewer validation epochs than this: "too_early"
MIN_REL_SLOPE = 5e-4  # |val slope| / val loss per epoch below this is flat in practice (< 0.5 % over 10 epochs)
DIVERGING_REL_SLOPE = 0.01  # validation rising ≥ 1 %/epoch with training rising too: "unstable" (sharply, not drift)
SPIKE_MIN_COUNT = 3  # this many spikes within the last K epochs: "unstable"
LR_LOW_FRACTION = 0.1  # current LR below this share of the run's peak: already decayed, halving it changes little
SAMPLER_MIN_GAP = 0.1  # best-sampler score minus default-sampler score that counts as a sampler problem ...
SAMPLER_MIN_HEADROOM_SHARE = 0.5  # ... when the best setting also closes at least half the gap to the ceiling
QUALITY_GOOD_SHARE = 0.9  # default-sampler score at least this share of the ceiling: images are good already
ETA_WINDOW = 10  # recent epochs whose median duration the ETA uses


@dataclass
class Diagnosis:
    """A verdict on a run, the numbers behind it, and what to do next."""

    verdict: str  # one of VERDICTS
    evidence: dict[str, Any]  # slopes, CIs, spike and NaN counts, quality numbers
    recommendation: str  # one sentence in the old guide's terms
    summary: str  # one readable line
    eta: dict[str, Any] = field(default_factory=dict)  # see eta()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: numpy scalars become Python numbers, NaN/inf become None."""
        return jsonable(asdict(self))


def diagnose(train: pd.DataFrame, val: pd.DataFrame, last_k: int = 10, quality: dict | None = None,
             target_epochs: int | None = None, schedule: ScheduleState | None = None, skills: list[dict] | None = None,
             checkpoint: str | None = None, reports_dir: str | None = None) -> Diagnosis:
    """Verdict on the last K = min(last_k, max(MIN_VAL_POINTS, half the run)) validation epochs; rules checked in
    this order, first match wins.

    1. unstable: a NaN/inf training or validation loss anywhere in the (deduplicated) log, or at least
       SPIKE_MIN_COUNT training-loss spikes (count_spikes) within the last K epochs.
    2. too_early: fewer than MIN_VAL_POINTS validation epochs.
    3. Slopes per epoch over the last K epochs by OLS with a CI_LEVEL t-interval: validation loss
       (val_loss_ema when logged for all K, else val_loss) and training loss (train_loss per epoch).
       The CI is widened for autocorrelated epochs (see trends.slope). Validation counts as rising/falling when
       its CI excludes zero and |slope| / loss ≥ MIN_REL_SLOPE; training when its CI excludes zero.
       overfitting: validation rising while training falls or stays flat;
       unstable: validation rising by ≥ DIVERGING_REL_SLOPE per epoch and training rising too (diverging);
       decayed_still_learning: the schedule has decayed to ~0 (`schedule`, see schedule_state.DECAYED_FRACTION)
       while a skill still rises (`skills`, skill_curve.skill_curve) or validation falls: recommend a warm restart
       (training.lr_restart at schedule_state.restart_rate) with the exact command, resuming `checkpoint`;
       still_improving: validation falling (recommend continuing to num_epochs, or 50 % further, with an ETA);
       plateau: otherwise, a mild joint rise included (recommend half the learning rate, unless skills still rise,
       the LR has already decayed below LR_LOW_FRACTION of its peak ("won't help" only when the skills are known
       and flat too) or `quality` says the images are good or the sampler is the problem).
    `quality` ({"overall", "best_sampler_overall", "ceiling"}) marks a sampler problem when the best sampler
    beats the default by ≥ SAMPLER_MIN_GAP and closes ≥ SAMPLER_MIN_HEADROOM_SHARE of the gap to the ceiling.
    `schedule` defaults to the logged learning rate (schedule_state without a checkpoint); `skills` None: unknown.
    """
    if last_k < 3:
        raise ValueError(f"last_k must be at least 3 (a slope with a confidence interval needs 3 points), got {last_k}")
    # At most the recent half of the run: a line through the fast early decay has large, autocorrelated
    # residuals, which widens the CI until a loss that falls every epoch reads as a plateau.
    window = min(last_k, max(MIN_VAL_POINTS, len(val) // 2))
    ev = _evidence(train, val, val.tail(window))
    ev.update(_learning_evidence(schedule or schedule_state(train, val), skills or [], checkpoint, reports_dir))
    timing = eta(train, val, target_epochs)
    verdict, reason = _verdict(ev, len(val))
    ev.update(_quality_evidence(quality))
    recommendation = _recommend(verdict, reason, ev, timing, train, val)
    return Diagnosis(verdict, ev, recommendation, _summary(verdict, reason, ev), timing)


def _evidence(train: pd.DataFrame, val: pd.DataFrame, window: pd.DataFrame) -> dict[str, Any]:
    """The numbers the verdict rests on, all from the validation window (the last K epochs) unless named."""
    ema_logged = len(window) > 0 and bool(np.isfinite(window["val_loss_ema"]).all())
    series = "val_loss_ema" if ema_logged else "val_loss"
    epochs = window["epoch"].to_numpy(dtype=float)
    first_epoch = epochs[0] if len(epochs) else 0
    in_window = train[train["epoch"] >= first_epoch]
    train_loss = window["train_loss"].to_numpy(dtype=float)
    if len(train_loss) == 0 or not np.isfinite(train_loss).all():  # no per-epoch train_loss: average the log points
        train_loss = in_window.groupby("epoch")["loss"].mean().reindex(window["epoch"]).to_numpy(dtype=float)
    val_fit, train_fit = slope(epochs, window[series].to_numpy(dtype=float)), slope(epochs, train_loss)
    spikes = count_spikes(train["loss"].to_numpy(dtype=float))[train["epoch"].to_numpy() >= first_epoch]
    bad_epochs = pd.concat([train.loc[~np.isfinite(train["loss"]), "epoch"],
                            val.loc[~np.isfinite(val["val_loss"]), "epoch"]])
    finite = val[np.isfinite(val[series])]
    best = finite.loc[finite[series].idxmin()] if len(finite) else None
    lr = _last_finite(train, "lr") or _last_finite(val, "lr")
    return {
        "epochs_done": int(val["epoch"].max()) if len(val) else 0, "window_epochs": len(window),
        "val_series": series, "val_loss_last": window[series].iloc[-1] if len(window) else None,
        "val_loss_best": best[series] if best is not None else None,
        "best_epoch": int(best["epoch"]) if best is not None else None,
        **{f"val_{k}": v for k, v in val_fit.items()}, "val_direction": direction(val_fit, MIN_REL_SLOPE),
        **{f"train_{k}": v for k, v in train_fit.items()}, "train_direction": direction(train_fit),
        "ci_level": CI_LEVEL, "spikes": int(spikes.sum()),
        "nan_seen": len(bad_epochs) > 0, "nan_count": len(bad_epochs),
        "first_nan_epoch": int(bad_epochs.min()) if len(bad_epochs) else None,
        "nan_rolled_back": train.attrs.get("superseded_nonfinite", 0), "resumes": train.attrs.get("resumes", 0),
        "grad_norm_median": in_window["grad_norm"].median(), "grad_norm_max": in_window["grad_norm"].max(),
        "lr": lr, "peak_lr": float(train["lr"].max()) if train["lr"].notna().any() else lr,
    }


def _last_finite(df: pd.DataFrame, col: str) -> float | None:
    values = df[col].dropna() if col in df else []
    return float(values.iloc[-1]) if len(values) else None


def _learning_evidence(schedule: ScheduleState, curve: list[dict], checkpoint: str | None,
                       reports_dir: str | None) -> dict[str, Any]:
    """The schedule's state and the skill curve, as evidence keys (schedule_*, skills_*)."""
    up = skill_curve.rising(curve)
    return {**{f"schedule_{k}": v for k, v in schedule.to_dict().items()}, "schedule_text": schedule.text(),
            **({"lr": schedule.lr} if schedule.lr is not None else {}),
            "skills_known": any(r["overall_change"] for r in curve),
            "skills_rising": [r["skill"] for r in up], "skills_rising_text": "; ".join(map(skill_curve.describe, up)),
            "skills_flat": [r["skill"] for r in curve if not r["still_rising"]],
            "skills_text": skill_curve.curve_sentence(curve, reports_dir or "the run's reports folder"),
            "resume_checkpoint": checkpoint}


def _verdict(ev: dict, n_val: int) -> tuple[str, str]:
    if ev["nan_seen"]:
        return "unstable", "nan"
    if ev["spikes"] >= SPIKE_MIN_COUNT:
        return "unstable", "spikes"
    if n_val < MIN_VAL_POINTS:
        return "too_early", "few_points"
    if ev["val_direction"] == "up":
        if ev["train_direction"] != "up":
            return "overfitting", "gap"
        if ev["val_rel_slope"] >= DIVERGING_REL_SLOPE:
            return "unstable", "diverging"
    if ev["schedule_decayed"] and (ev["skills_rising"] or ev["val_direction"] == "down"):
        return "decayed_still_learning", "skills" if ev["skills_rising"] else "falling"
    return ("still_improving", "falling") if ev["val_direction"] == "down" else ("plateau", "flat")


def _quality_evidence(quality: dict | None) -> dict[str, Any]:
    if not quality or quality.get("overall") is None:
        return {}
    overall, ceiling = float(quality["overall"]), float(quality.get("ceiling") or 1.0)
    best = quality.get("best_sampler_overall")
    gap = float(best) - overall if best is not None else None
    headroom = ceiling - overall
    return {"quality_overall": overall, "quality_ceiling": ceiling, "quality_best_sampler": best, "sampler_gap": gap,
            "sampler_problem": gap is not None and gap >= SAMPLER_MIN_GAP
            and (headroom <= 0 or gap / headroom >= SAMPLER_MIN_HEADROOM_SHARE),
            "quality_good": overall >= QUALITY_GOOD_SHARE * ceiling}


def _recommend(verdict: str, reason: str, ev: dict, timing: dict, train: pd.DataFrame, val: pd.DataFrame) -> str:
    lower = (f"a lower learning rate, e.g. {fmt_lr(ev['lr'] / 2)} (half of {fmt_lr(ev['lr'])})"
             if ev["lr"] else "a lower learning rate (half the current one)")
    sampler = (f"the sampler settings are the problem: see the sampler sweep (default sampler scores "
               f"{ev['quality_overall']:.2f}, the best setting {ev['quality_best_sampler']:.2f}, "
               f"real images {ev['quality_ceiling']:.2f})") if ev.get("sampler_problem") else ""
    further = math.ceil(ev["epochs_done"] * 1.5 / 10) * 10  # past the configured end: go 50 % further
    if verdict == "unstable" and reason == "nan":
        return (f"resume from the last checkpoint before epoch {ev['first_nan_epoch']} with {lower}; keep gradient "
                "clipping on (training.max_grad_norm) and prefer bf16 to fp16: "
                f"--resume latest --set training.learning_rate={fmt_lr(ev['lr'] / 2) if ev['lr'] else '<half>'}")
    if verdict == "unstable":
        what = (f"{ev['spikes']} training-loss spikes in the last {ev['window_epochs']} epochs" if reason == "spikes"
                else "training and validation loss both rising")
        return f"resume from the latest checkpoint with {lower} and gradient clipping (training.max_grad_norm): {what}"
    if verdict == "too_early":
        return (f"continue training: a verdict needs at least {MIN_VAL_POINTS} validation epochs "
                f"(have {ev['epochs_done']}); {timing['text']}")
    if verdict == "overfitting":
        return (f"add data or regularise (augmentation, more caption dropout, weight decay); meanwhile use the "
                f"checkpoint nearest epoch {ev['best_epoch']}, where {ev['val_series']} was lowest "
                f"({ev['val_loss_best']:.4g})")
    if verdict == "decayed_still_learning":
        why = [f"skills still rise: {ev['skills_rising_text']}"] if ev["skills_rising"] else []
        if ev["val_direction"] == "down":
            why.append(f"{ev['val_series']} still falls ({100 * ev['val_rel_slope']:+.2f} %/epoch)")
        unknown = "" if ev["skills_known"] else " (no skill curve to confirm it: run `t2ilab report --run OUTPUT_DIR`)"
        spent = (f"the {ev['schedule_schedule'] or 'learning-rate'} schedule has decayed to "
                 f"{ev['schedule_fraction_of_peak']:.1%} of its peak ({fmt_lr(ev['lr'])} of "
                 f"{fmt_lr(ev['schedule_peak_lr'])})")
        return (f"start a new warm-restart segment, not more epochs at this rate or a lower one: {spent} while "
                f"{' and '.join(why)}{unknown}. {_restart(ev, further, train, val)}")
    if verdict == "still_improving":
        target = timing.get("target_epochs")
        if target is None or ev["epochs_done"] >= target:
            target, timing = further, eta(train, val, further)
        text = f"continue training to {target} epochs: {timing['text']}"
        return text + (f"; also {sampler}" if sampler else "")
    if sampler:
        return f"the model is fine; {sampler}"
    if ev.get("quality_good"):
        return (f"stop here: the loss has plateaued and images score {ev['quality_overall']:.2f} of a "
                f"{ev['quality_ceiling']:.2f} ceiling; to go further add data or grow the model")
    if ev["skills_rising"]:  # the loss is flat but the judge sees learning: the schedule is not spent yet
        target = timing.get("target_epochs")
        if target is None or ev["epochs_done"] >= target:
            target, timing = further, eta(train, val, further)
        return (f"continue training to {target} epochs: the validation loss is flat but skills still rise "
                f"({ev['skills_rising_text']}); {timing['text']}")
    low = ev["lr"] is not None and ev["peak_lr"] and ev["lr"] < LR_LOW_FRACTION * ev["peak_lr"]  # a cosine ends at 0
    if low or ev["schedule_decayed"]:
        decayed = f"an already decayed learning rate ({fmt_lr(ev['lr'])}, peak {fmt_lr(ev['peak_lr'])})"
        if ev["skills_known"]:  # flat loss and flat skills: the evidence for "won't help"
            return (f"the loss and the skills have both stopped at {decayed} ({ev['skills_text']}): more epochs or a "
                    "lower learning rate won't help; add data or grow the model")
        return (f"the loss has converged at {decayed}; whether the model still learns needs the skill curve (run "
                f"`t2ilab report --run OUTPUT_DIR`): if skills still rise, {_restart(ev, further, train, val)}; "
                "if not, add data or grow the model")
    return f"resume from the latest checkpoint with {lower}: the validation loss has stopped falling"


def _restart(ev: dict, target: int, train: pd.DataFrame, val: pd.DataFrame) -> str:
    """The warm-restart sentence with its rate and the exact command."""
    rate, peak = ev["schedule_restart_rate"], ev["schedule_run_peak_lr"]
    if not rate:
        return "resume with a new cosine segment (--set training.lr_restart=<half the run's peak>)"
    resume = f"--resume {ev['resume_checkpoint']}" if ev["resume_checkpoint"] else "--config CONFIG --resume latest"
    restarted = ev["schedule_lr_restart"]
    why = (f"half the last restart's peak {fmt_lr(restarted)}: the run already restarted at half its peak"
           if restarted and math.isclose(rate, restarted / 2) else
           f"half the run's peak {fmt_lr(peak)}, as `t2ilab arms`' restart arm")
    return (f"Resume with a new cosine from {fmt_lr(rate)} ({why}) to {target} epochs: "
            f"`t2ilab train {resume} --set training.lr_restart={fmt_lr(rate)} "
            f"--set training.num_epochs={target}`; {eta(train, val, target)['text']}")


TREND_WORDS = {"down": "falling", "up": "rising", "flat": "no clear trend: its CI includes zero"}


def _summary(verdict: str, reason: str, ev: dict) -> str:
    if reason == "nan":
        return f"unstable: non-finite loss in {ev['nan_count']} log points, first at epoch {ev['first_nan_epoch']}"
    if reason == "spikes":
        return f"unstable: {ev['spikes']} training-loss spikes in the last {ev['window_epochs']} epochs"
    if reason == "few_points":
        return f"too_early: {ev['epochs_done']} validation epochs, a verdict needs {MIN_VAL_POINTS}"
    pct = 100 * ev["val_rel_slope"]
    return (f"{verdict}: {ev['val_series']} {pct:+.2f} %/epoch over the last {ev['window_epochs']} epochs (slope "
            f"{ev['val_slope']:.2e}, {CI_LEVEL:.0%} CI [{ev['val_ci_low']:.2e}, {ev['val_ci_high']:.2e}]); "
            f"training loss {100 * ev['train_rel_slope']:+.2f} %/epoch ({TREND_WORDS[ev['train_direction']]})"
            + (f"; {ev['schedule_text']}; skills rising: {', '.join(ev['skills_rising']) or 'unknown'}"
               if verdict == "decayed_still_learning" else ""))


def eta(train: pd.DataFrame, val: pd.DataFrame, target_epochs: int | None = None) -> dict[str, Any]:
    """Epochs and seconds left to target_epochs (default: num_epochs from the log) at the measured epoch time."""
    done = int(val["epoch"].max()) if len(val) else 0
    target = target_epochs or (int(_last_finite(val, "num_epochs")) if _last_finite(val, "num_epochs") else None)
    recent = val.tail(ETA_WINDOW)
    seconds = recent["epoch_seconds"].to_numpy(dtype=float) if "epoch_seconds" in recent else np.array([])
    seconds, source = seconds[np.isfinite(seconds) & (seconds > 0)], "epoch_seconds"
    if len(seconds) == 0 and "time" in recent:  # no per-epoch timing: fall back to wall-clock time between epochs
        seconds, source = np.diff(recent["time"].to_numpy(dtype=float)), "wall_clock"
        seconds = seconds[np.isfinite(seconds) & (seconds > 0)]
    per_epoch = float(np.median(seconds)) if len(seconds) else None  # median: a resume gap or slow epoch doesn't skew
    left = max(target - done, 0) if target else None
    out = {"epochs_done": done, "target_epochs": target, "epochs_left": left, "seconds_per_epoch": per_epoch,
           "seconds_left": left * per_epoch if left is not None and per_epoch else None,
           "measured_epochs": len(seconds), "source": source if len(seconds) else None}
    if target is None:
        out["text"] = f"{done} epochs done; no target (num_epochs) in the log"
    elif left == 0:
        out["text"] = f"target of {target} epochs reached ({done} done)"
    elif per_epoch is None:
        out["text"] = f"{left} epochs left (no epoch timing in the log yet)"
    else:
        rate = f"{per_epoch:.0f}" if per_epoch >= 10 else f"{per_epoch:.1f}"
        out["text"] = (f"{left} epochs left ≈ {format_duration(out['seconds_left'])} at {rate} s/epoch "
                       f"(measured over the last {len(seconds)} epochs)")
    return out


def format_duration(seconds: float) -> str:
    """820 -> '13 min 40 s', 5002 -> '1 h 23 min', 190000 -> '2 d 4 h'."""
    s = int(round(seconds))
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def run_context(train: pd.DataFrame, val: pd.DataFrame, output_dir: str | Path, checkpoint: str | Path | None = None,
                reports_dir: str | Path | None = None) -> dict[str, Any]:
    """diagnose()'s schedule, skills, checkpoint and reports_dir for a run at `checkpoint` (default: its latest)."""
    run = Path(output_dir).resolve()
    run = run.parent if run.is_file() else run  # a metrics.jsonl path
    found = list_checkpoints(run)
    ckpt = resolve_checkpoint(checkpoint, run) if checkpoint else (found[-1][0] if found else None)
    cfg = load_config(ckpt / "config.yaml") if ckpt else None
    if reports_dir is None:  # where `t2ilab report` writes: reports.reports_dir/<run folder name>
        reports_dir = resolve_path(cfg.reports.reports_dir if cfg else "reports") / run.name
    until = int(val["epoch"].max()) if len(val) else None
    curve = skill_curve.skill_curve(skill_curve.milestone_skills(reports_dir, until_epoch=until))
    shown = ckpt.resolve() if ckpt else None
    if shown is not None and shown.is_relative_to(Path.cwd()):
        shown = shown.relative_to(Path.cwd())  # the command reads better from where it is typed
    return {"schedule": schedule_state(train, val, ckpt), "skills": curve,
            "checkpoint": str(shown) if shown else None, "reports_dir": str(reports_dir)}


def diagnose_run(output_dir: str | Path, target_epochs: int | None = None, quality: dict | None = None,
                 reports_dir: str | Path | None = None) -> dict:
    """Read, diagnose and time a run with its schedule and skill curve; a JSON-safe dict for a metrics.json sidecar."""
    train, val = read_metrics(output_dir)
    context = run_context(train, val, output_dir, reports_dir=reports_dir)
    out = diagnose(train, val, quality=quality, target_epochs=target_epochs, **context).to_dict()
    out["skills"] = jsonable(context["skills"])
    out["log"] = jsonable({k: train.attrs.get(k) for k in ("path", "skipped_lines", "resumes")}
                          | {"train_points": len(train), "val_points": len(val)})
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m t2ilab.review.diagnose <output_dir> [--plot out.png] [--target-epochs N] [--last-k K] [--json]`."""
    parser = argparse.ArgumentParser(prog="python -m t2ilab.review.diagnose", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="a run's output_dir, or its metrics.jsonl")
    parser.add_argument("--plot", help="also save the training figure here (PNG)")
    parser.add_argument("--target-epochs", type=int, help="ETA target (default: num_epochs from the log)")
    parser.add_argument("--last-k", type=int, default=10, help="validation epochs the slopes are fitted on")
    parser.add_argument("--reports-dir", help="the run's reports folder (default: reports.reports_dir/<run>)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        train, val = read_metrics(args.output_dir)
    except MetricsError as err:
        print(f"t2ilab.review.diagnose: {err}", file=sys.stderr)
        return 2
    context = run_context(train, val, args.output_dir, reports_dir=args.reports_dir)
    result = diagnose(train, val, last_k=args.last_k, target_epochs=args.target_epochs, **context)
    if args.plot:
        plot_training(train, val, args.plot)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    ev = result.evidence
    print(f"verdict: {result.verdict}\n{result.summary}\nrecommendation: {result.recommendation}")
    print(f"schedule: {ev['schedule_text']}\nskills: {ev['skills_text']}")
    print(f"eta: {result.eta['text']}\nevidence:")
    for key, value in result.to_dict()["evidence"].items():
        print(f"  {key:<26} {f'{value:.4g}' if isinstance(value, float) else value}")
    if train.attrs.get("skipped_lines"):
        print(f"({train.attrs['skipped_lines']} unreadable lines in {train.attrs['path']} were skipped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
