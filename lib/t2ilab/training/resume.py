"""Resume plans and the learning-rate schedule policy.

The LR schedule is a list of *segments*. A fresh run has one: `lr_scheduler` from `learning_rate` with
warm-up over all steps. On resume with nothing changed the saved segment and its scheduler state are
restored exactly. When `training.learning_rate`, `training.num_epochs`, `training.batch_size`,
`training.lr_scheduler` or `training.lr_restart` change, a new segment starts at the resume step with no warm-up:
  - a new learning rate: the schedule restarts its shape from the new rate (1e-4 -> 5e-5 takes effect at once);
  - only more epochs: it starts from the learning rate in effect at the checkpoint, so there is no jump,
    and decays with the same shape over the remaining steps (constant stays constant).
  - a new `training.lr_restart` peak: a warm restart (SGDR, https://arxiv.org/abs/1608.03983): the schedule
    restarts its shape from that peak over the steps left to num_epochs, whatever the learning rate was.
The restart is a resume-time instruction kept in the config: resuming the restarted run's own checkpoints
(same lr_restart) restores their segment exactly, so an interrupted restart continues, it does not restart again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffusers.optimization import get_scheduler

from t2ilab.config import Config
from t2ilab.training.checkpoint import CheckpointError

# Changing these sections changes the network or the forward process: the checkpoint cannot continue.
_REFUSE_SECTIONS = ("model", "noise")


def fresh_segment(cfg: Config, steps_per_epoch: int) -> dict:
    return {
        "start_step": 0,
        "base_lr": cfg.training.learning_rate,
        "warmup": cfg.training.lr_warmup_steps,
        "schedule": cfg.training.lr_scheduler,
        "total_steps": cfg.training.num_epochs * steps_per_epoch,
    }


def build_lr_scheduler(optimizer, segment: dict):
    """diffusers' get_scheduler over the segment's steps, starting from its base learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = segment["base_lr"]
        group.pop("initial_lr", None)
    return get_scheduler(
        segment["schedule"],
        optimizer,
        num_warmup_steps=segment["warmup"],
        num_training_steps=max(1, segment["total_steps"] - segment["start_step"]),
    )


@dataclass
class ResumePlan:
    """What resuming will do, printed before training starts."""

    checkpoint: Path
    epoch: int  # completed epochs in the checkpoint
    global_step: int
    step_in_epoch: int  # next batch index within the epoch (0 at an epoch boundary)
    lr_segment: dict
    new_segment: bool
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def render(self) -> str:
        where = f"epoch {self.epoch}" + (f", batch {self.step_in_epoch} of the next epoch" if self.step_in_epoch else "")
        out = [f"resume plan: {self.checkpoint} ({where}, global step {self.global_step})"]
        out += [f"  - {line}" for line in self.lines]
        out += [f"  ! {w}" for w in self.warnings]
        return "\n".join(out)


def _diff(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append((f"{prefix}{key}", a, b))
    return changes


def plan_resume(
    checkpoint: Path,
    state: dict,
    old_cfg: Config,
    new_cfg: Config,
    data_fingerprint: str,
    steps_per_epoch: int,
    current_lr: float,
    world_size: int,
) -> ResumePlan:
    """Compare the checkpoint's run with the requested one; refuse what cannot continue, plan the rest."""
    old, new = old_cfg.to_dict(), new_cfg.to_dict()
    _refuse_what_cannot_continue(checkpoint, state, old, new)
    epoch, step_in_epoch, spe_changed, lines, warnings = _position(state, old["training"], new["training"],
                                                                  data_fingerprint, steps_per_epoch, world_size)
    segment, new_segment, line = _lr_segment(state, old["training"], new["training"], spe_changed, epoch, step_in_epoch,
                                             steps_per_epoch, current_lr)
    lines.append(line)
    if old["training"]["num_epochs"] != new["training"]["num_epochs"]:
        lines.append(f"training.num_epochs {old['training']['num_epochs']} -> {new['training']['num_epochs']}")
    skip = {f"training.{k}" for k in _SCHEDULE_KEYS} | {"training.batch_size", "training.seed", "output_dir"}
    for key, a, b in _diff(old, new):
        if key not in skip and not key.startswith("data."):
            lines.append(f"{key}: {a!r} -> {b!r} (applied from here on)")
    for key, a, b in _diff(old["data"], new["data"], "data."):
        lines.append(f"{key}: {a!r} -> {b!r}")
    return ResumePlan(checkpoint=checkpoint, epoch=epoch, global_step=state["global_step"], step_in_epoch=step_in_epoch,
                      lr_segment=segment, new_segment=new_segment, lines=lines, warnings=warnings)


_SCHEDULE_KEYS = ("learning_rate", "num_epochs", "batch_size", "lr_scheduler", "lr_restart")  # a change: new segment


def _refuse_what_cannot_continue(checkpoint: Path, state: dict, old: dict, new: dict) -> None:
    """Another network or forward process, or no epochs left: a CheckpointError that says what to do."""
    for section in _REFUSE_SECTIONS:
        changed = _diff(old[section], new[section], f"{section}.")
        if changed:
            detail = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed)
            raise CheckpointError(
                f"cannot resume {checkpoint}: it was trained with a different {section} ({detail}). "
                f"Use the checkpoint's config (omit --config, or keep its {section}: section) or start a new output_dir."
            )
    epoch, step_in_epoch, num_epochs = state["epoch"], state.get("step_in_epoch", 0), new["training"]["num_epochs"]
    if num_epochs < epoch or (num_epochs == epoch and step_in_epoch == 0):
        raise CheckpointError(
            f"training.num_epochs={num_epochs} but {checkpoint} has already completed {epoch} epochs; "
            f"raise it, e.g. --set training.num_epochs={max(epoch * 3 // 2, epoch + 1)}"
        )


def _position(state: dict, t_old: dict, t_new: dict, data_fingerprint: str, steps_per_epoch: int,
              world_size: int) -> tuple[int, int, bool, list[str], list[str]]:
    """(epoch, step in epoch, steps per epoch changed, plan lines, warnings): where the resumed run starts."""
    epoch, global_step, step_in_epoch = state["epoch"], state["global_step"], state.get("step_in_epoch", 0)
    lines: list[str] = []
    warnings: list[str] = []
    if state.get("world_size", 1) != world_size:
        lines.append(
            f"processes: {state.get('world_size', 1)} -> {world_size}; the global batch stays "
            f"{t_new['batch_size']}, so the data order is unchanged (equal up to float reduction order)"
        )
    if t_old["batch_size"] != t_new["batch_size"]:
        warnings.append(
            f"training.batch_size {t_old['batch_size']} -> {t_new['batch_size']}: steps per epoch change and the "
            f"run is no longer exact" + ("; the interrupted epoch restarts at its next boundary" if step_in_epoch else "")
        )
        if step_in_epoch:
            epoch, step_in_epoch = epoch + 1, 0
    # Older checkpoints lack steps_per_epoch: derive it from the position (exact unless the batch size changed).
    old_spe = state.get("steps_per_epoch") or ((global_step - step_in_epoch) // epoch if epoch else steps_per_epoch)
    spe_changed = old_spe != steps_per_epoch and t_old["batch_size"] == t_new["batch_size"]
    if spe_changed:
        warnings.append(
            f"steps per epoch {old_spe} -> {steps_per_epoch} (the training split changed size): the learning-rate "
            f"schedule is rebuilt over the remaining steps" + ("; the interrupted epoch restarts at its next boundary" if step_in_epoch else "")
        )
        if step_in_epoch:
            epoch, step_in_epoch = epoch + 1, 0
    if state.get("data_fingerprint") != data_fingerprint:
        warnings.append("the data set differs from the checkpoint's (data fingerprint changed); training continues on the new data")
    if t_old["seed"] != t_new["seed"]:
        warnings.append(f"training.seed {t_old['seed']} -> {t_new['seed']}: noise and data order change from here on")
    return epoch, step_in_epoch, spe_changed, lines, warnings


def _lr_segment(state: dict, t_old: dict, t_new: dict, spe_changed: bool, epoch: int, step_in_epoch: int,
                steps_per_epoch: int, current_lr: float) -> tuple[dict, bool, str]:
    """(segment, whether it is new, the plan line): the saved segment, or a new one when the schedule changed."""
    global_step = state["global_step"]
    if not (spe_changed or any(t_old.get(k) != t_new.get(k) for k in _SCHEDULE_KEYS)):
        return dict(state["lr_segment"]), False, f"learning rate: schedule restored exactly (current {current_lr:.2e})"
    restart = t_new["lr_restart"] is not None and t_old.get("lr_restart") != t_new["lr_restart"]
    lr_changed = t_old["learning_rate"] != t_new["learning_rate"]
    base = t_new["lr_restart"] if restart else t_new["learning_rate"] if lr_changed else current_lr
    segment = {
        "start_step": global_step,
        "base_lr": base,
        "warmup": 0,
        "schedule": "constant" if t_new["lr_scheduler"] == "constant_with_warmup" else t_new["lr_scheduler"],
        "total_steps": global_step + (t_new["num_epochs"] * steps_per_epoch - epoch * steps_per_epoch - step_in_epoch),
    }
    why = f"learning_rate {t_old['learning_rate']:.1e} -> {t_new['learning_rate']:.1e}" if lr_changed else (
        f"continuing from the current learning rate {current_lr:.2e} (no jump)"
    )
    if restart:
        why = f"restart from peak {base:.2e} (training.lr_restart; it was {current_lr:.2e})"
    return segment, True, f"learning rate: new '{segment['schedule']}' segment from step {global_step} to {segment['total_steps']}, {why}"
