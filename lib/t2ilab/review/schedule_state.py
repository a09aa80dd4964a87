"""Where a run's learning-rate schedule stands: the current rate, its segment's peak, the steps left, whether a
decaying schedule has reached ~0, and the peak a warm restart (`training.lr_restart`) would start from.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from t2ilab.config import load_config

# A cosine below 5 % of its peak is in the last ~14 % of its segment ((1 + cos(pi t)) / 2 < 0.05 for t > 0.856):
# steps there move the weights by a twentieth of the early ones, so a flat loss says the rate is spent, not the model.
DECAYED_FRACTION = 0.05
# A warm restart's peak as a share of the run's peak: `t2ilab arms`' default --restart-peak (learning_rate / 2),
# the restart the README measured from the demo's epoch-12 checkpoint.
RESTART_SHARE = 0.5
DECAYING = ("cosine", "linear")  # schedules that fall towards zero; constant ones never "decay"


@dataclass
class ScheduleState:
    """The learning-rate schedule at the end of the log (or at a checkpoint), with where each number came from."""

    lr: float | None  # the rate now
    peak_lr: float | None  # the current segment's peak (its base_lr), else the largest logged rate
    run_peak_lr: float | None  # training.learning_rate: the run's first peak (else the largest logged rate)
    fraction_of_peak: float | None  # lr / peak_lr
    schedule: str | None  # "cosine", "linear", "constant", ...; None when only the logged rate is known
    global_step: int | None
    steps_left: int | None  # to the end of the current segment (training.num_epochs)
    steps_per_epoch: int | None
    decayed: bool  # a decaying schedule below DECAYED_FRACTION of its peak
    lr_restart: float | None  # the run's training.lr_restart (None: never restarted)
    restart_rate: float | None  # the peak to recommend for a new warm-restart segment
    source: str  # "logged" (metrics.jsonl), "recomputed" (diffusers' get_scheduler for the saved segment) or "none"

    def to_dict(self) -> dict:
        """Plain dict for the diagnosis' evidence."""
        return asdict(self)

    def text(self) -> str:
        """'cosine schedule at 2.0% of its peak (2e-6 of 1e-4, 40 steps left, logged): decayed to ~0 (below 5%)'."""
        if self.lr is None:
            return "learning-rate schedule unknown: no lr in metrics.jsonl and no checkpoint to recompute it from"
        left = f", {self.steps_left} steps left" if self.steps_left is not None else ""
        where = f" at {self.fraction_of_peak:.1%} of its peak" if self.fraction_of_peak is not None else ""
        peak = f" of {fmt_lr(self.peak_lr)}" if self.peak_lr else ""
        state = f": decayed to ~0 (below {DECAYED_FRACTION:.0%})" if self.decayed else ""
        return f"{self.schedule or 'learning-rate'} schedule{where} ({fmt_lr(self.lr)}{peak}{left}, {self.source}){state}"


def fmt_lr(lr: float) -> str:
    """5e-05 -> '5e-5', 0.000125 -> '1.25e-4', 0 -> '0'."""
    if lr == 0:
        return "0"
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def lr_at(segment: dict, step: int) -> float:
    """The rate diffusers' get_scheduler gives at global `step` for a saved segment (resume.build_lr_scheduler)."""
    import torch

    from t2ilab.training.resume import build_lr_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=segment["base_lr"])
    scheduler = build_lr_scheduler(optimizer, segment)
    return segment["base_lr"] * scheduler.lr_lambdas[0](max(0, step - segment["start_step"]))


def schedule_state(train: pd.DataFrame, val: pd.DataFrame, checkpoint: str | Path | None = None) -> ScheduleState:
    """The schedule from the log, and from `checkpoint`'s config and saved segment when given (the logged rate at its
    step is preferred; without one it is recomputed with get_scheduler)."""
    logged = train[["step", "lr"]].dropna() if "lr" in train else pd.DataFrame(columns=["step", "lr"])
    logged = pd.concat([logged, val[["step", "lr"]].dropna() if "lr" in val else logged.iloc[:0]])
    logged = logged.sort_values("step", kind="stable")
    cfg = segment = None
    step = steps_per_epoch = None
    if checkpoint is not None:
        folder = Path(checkpoint)
        cfg = load_config(folder / "config.yaml")
        state = json.loads((folder / "training_state" / "state.json").read_text(encoding="utf-8"))
        segment, step, steps_per_epoch = state["lr_segment"], int(state["global_step"]), state.get("steps_per_epoch")
        logged = logged[logged["step"] <= step]
    at_step = logged[logged["step"] == step] if step is not None else logged.tail(1)
    if len(at_step):
        lr, source = float(at_step["lr"].iloc[-1]), "logged"
    elif segment is not None:
        lr, source = lr_at(segment, step), "recomputed"
    else:
        lr, source = None, "none"
    largest = float(logged["lr"].max()) if len(logged) else None
    peak = float(segment["base_lr"]) if segment else largest
    run_peak = cfg.training.learning_rate if cfg is not None else largest
    if step is None and len(logged):
        step = int(logged["step"].iloc[-1])
    steps_per_epoch = steps_per_epoch or _steps_per_epoch(val)
    steps_left = _steps_left(segment, step, val, steps_per_epoch)
    schedule = segment["schedule"] if segment else None
    fraction = lr / peak if lr is not None and peak else None
    decayed = (fraction is not None and fraction < DECAYED_FRACTION
               and (schedule in DECAYING or (schedule is None and largest is not None)))
    lr_restart = cfg.training.lr_restart if cfg is not None else None
    return ScheduleState(lr, peak, run_peak, fraction, schedule, step, steps_left, steps_per_epoch, bool(decayed),
                         lr_restart, restart_rate(run_peak, lr_restart), source)


def restart_rate(run_peak: float | None, lr_restart: float | None = None) -> float | None:
    """RESTART_SHARE of the run's peak; half the last restart's peak when the run already restarted there (resuming
    with the same training.lr_restart continues that segment, it does not start a new one)."""
    if not run_peak:
        return None
    rate = RESTART_SHARE * run_peak
    if lr_restart is not None and math.isclose(rate, lr_restart):
        rate = RESTART_SHARE * lr_restart
    return float(f"{rate:.3g}")


def _steps_per_epoch(val: pd.DataFrame) -> int | None:
    if len(val) == 0 or val["epoch"].iloc[-1] <= 0:
        return None
    return int(val["step"].iloc[-1]) // int(val["epoch"].iloc[-1]) or None


def _steps_left(segment: dict | None, step: int | None, val: pd.DataFrame, steps_per_epoch: int | None) -> int | None:
    if step is None:
        return None
    if segment is not None:
        return max(0, int(segment["total_steps"]) - step)
    num_epochs = val["num_epochs"].dropna() if "num_epochs" in val else []
    if len(num_epochs) == 0 or not steps_per_epoch:
        return None
    return max(0, int(num_epochs.iloc[-1]) * steps_per_epoch - step)
