"""The samplers by name, each built from the training scheduler's config so prediction type and betas match, and
which of them are valid for a model's objective (diffusion or flow matching)."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from t2ilab.config import OBJECTIVE_SCHEDULERS

SCHEDULERS: dict[str, type] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "flow_euler": FlowMatchEulerDiscreteScheduler,  # flow matching only (noise.objective: flow_matching)
}
assert set(SCHEDULERS) == {n for names in OBJECTIVE_SCHEDULERS.values() for n in names}, "config.OBJECTIVE_SCHEDULERS"
SCHEDULER_OVERRIDES = {"dpmsolver++": {"algorithm_type": "dpmsolver++"}}  # on top of the training config
# The keys that describe the trained forward process; everything else is a sampler's own setting, so switching
# samplers gives the same result whichever sampler's config we start from.
TRAINING_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
    "rescale_betas_zero_snr", "timestep_spacing", "steps_offset", "clip_sample", "clip_sample_range",
)


def objective_of(scheduler_config) -> str:
    """The training objective a scheduler config belongs to: "flow_matching" for FlowMatchEulerDiscreteScheduler's."""
    # Every diffusion sampler's config carries the trained betas; the flow-matching one has none (and a fresh
    # scheduler's config has no _class_name, so that key alone cannot tell).
    flow = scheduler_config.get("_class_name") == FlowMatchEulerDiscreteScheduler.__name__ or "beta_schedule" not in scheduler_config
    return "flow_matching" if flow else "diffusion"


def valid_schedulers(scheduler_config) -> tuple[str, ...]:
    """The sampler names valid for the objective a scheduler config was trained with."""
    return OBJECTIVE_SCHEDULERS[objective_of(scheduler_config)]


def make_scheduler(name: str, training_scheduler_config) -> object:
    """A sampler built from the training scheduler's config, so prediction_type and betas match training."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; valid names: {', '.join(SCHEDULERS)}")
    objective, valid = objective_of(training_scheduler_config), valid_schedulers(training_scheduler_config)
    if name not in valid:
        raise ValueError(
            f"scheduler {name!r} cannot sample a model trained with noise.objective: {objective}; "
            f"valid for it: {', '.join(valid)}"
        )
    if objective == "flow_matching":
        return FlowMatchEulerDiscreteScheduler.from_config(training_scheduler_config)
    config = {k: v for k, v in dict(training_scheduler_config).items() if k in TRAINING_KEYS}
    return SCHEDULERS[name].from_config(config, **SCHEDULER_OVERRIDES.get(name, {}))
