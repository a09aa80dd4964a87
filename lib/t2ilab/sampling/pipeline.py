"""Sampling: `T2IPipeline` (a diffusers pipeline with the denoising loop written out), samplers, checkpoint loading.

Pixel space: the UNet denoises RGB images in [-1, 1] directly (vae=None); latent space: it denoises a frozen VAE's
latents and the VAE decodes them (representation.space_for).
"""

from __future__ import annotations

import inspect
import json
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

from t2ilab.sampling.schedulers import (  # noqa: F401  (re-exported: the sampler names live there)
    SCHEDULER_OVERRIDES,
    SCHEDULERS,
    TRAINING_KEYS,
    make_scheduler,
    objective_of,
    valid_schedulers,
)
from t2ilab.training import text
from t2ilab.training.checkpoint import CheckpointError, read_manifest, resolve_checkpoint
from t2ilab.training.model import has_coord_channels, with_coord_channels
from t2ilab.training.representation import space_for

try:  # Guidance rescale, https://arxiv.org/abs/2305.08891 section 3.4
    from diffusers.guiders.guider_utils import rescale_noise_cfg
except ImportError:  # older diffusers keep it only in the Stable Diffusion pipeline module
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

METADATA_FILE = "t2ilab.json"  # vocabulary and provenance, next to model_index.json after save_pretrained


class CheckpointWarning(UserWarning):
    """A checkpoint loads, but not as asked (e.g. no EMA weights)."""


def clean_prompt(prompt: str) -> tuple[str, int]:
    """(prompt without control characters, how many were removed); tabs and newlines become spaces."""
    out, removed = [], 0
    for ch in prompt:
        if unicodedata.category(ch) == "Cc":
            removed += 1
            if ch in "\t\n\r\x0b\x0c":
                out.append(" ")
        else:
            out.append(ch)
    return "".join(out), removed


def unknown_words_message(words: list[str]) -> str:
    """The warning shown for words no training caption contained."""
    return (
        f"the model never saw these words in training captions: {', '.join(words)} — "
        f"they carry no meaning for it (see vocabulary.json)"
    )


class T2IPipeline(DiffusionPipeline):
    """Text-to-image sampling with classifier-free guidance, in pixel space or (with a vae) in its latent space."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae"]

    def __init__(self, unet: UNet2DConditionModel, text_encoder, tokenizer, scheduler, vae=None):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, vae=vae)
        # Provenance, filled by load_pipeline / from_pretrained; vocabulary=None means unknown words cannot be checked.
        self.checkpoint_path: str | None = None
        self.manifest: dict = {}
        self.vocabulary: list[str] | None = None
        self.weights: str | None = None

    @property
    def max_prompt_tokens(self) -> int:
        """Tokens the text encoder reads; longer prompts are truncated."""
        n = min(self.tokenizer.model_max_length, 512)
        positions = getattr(self.text_encoder.config, "max_position_embeddings", None)
        return min(n, positions) if positions else n

    @property
    def resolution(self) -> int:
        """The side of the images this pipeline returns (the UNet's sample size times the VAE's downsampling)."""
        return space_for(self.vae, self.unet.config.sample_size).resolution

    def set_scheduler(self, name: str) -> None:
        """Switch sampler; the trained betas and prediction_type carry over."""
        self.scheduler = make_scheduler(name, self.scheduler.config)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        guidance_rescale: float = 0.0,
        seed: int | list[int] = 0,
        output_type: str = "pil",
        progress: bool = False,
    ) -> ImagePipelineOutput:
        """Images for `prompt`; image k uses its own generator seeded with seed[k] (or seed + k)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        seeds, negatives = _check_call_args(
            prompts, negative_prompt, num_inference_steps, guidance_scale, guidance_rescale, seed, output_type
        )
        prompts = [clean_prompt(p)[0] for p in prompts]
        negatives = [clean_prompt(p)[0] for p in negatives]
        device = self.unet.device
        do_guidance = guidance_scale > 1.0

        encoder_hidden_states = self._encode(prompts)
        if do_guidance:
            # One batched forward pass: [uncond; cond]. "" is what caption dropout trained as "no caption".
            encoder_hidden_states = torch.cat([self._encode(negatives), encoder_hidden_states])

        # Generators live on the CPU so an image is the same whatever device samples it.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        channels, size = self.unet.config.out_channels, self.unet.config.sample_size
        coords = has_coord_channels(self.unet.config)
        noise = torch.cat([torch.randn((1, channels, size, size), generator=g) for g in generators])
        flow = isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler)
        if flow:  # an even grid of t from 1 (pure noise) down to 0, as the UNet's timesteps t * 1000
            self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].tolist(), device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        noisy_images = noise.to(device=device, dtype=self.unet.dtype) * getattr(self.scheduler, "init_noise_sigma", 1.0)
        # Stochastic samplers (ddpm, euler_ancestral) draw fresh noise each step: from each image's own generator.
        step_kwargs = {"generator": generators} if "generator" in inspect.signature(self.scheduler.step).parameters else {}

        for timesteps in tqdm(self.scheduler.timesteps, disable=not progress, desc="denoising", leave=False):
            model_input = torch.cat([noisy_images] * 2) if do_guidance else noisy_images
            if not flow:
                model_input = self.scheduler.scale_model_input(model_input, timesteps)
            if coords:
                model_input = with_coord_channels(model_input)
            model_pred = self.unet(model_input, timesteps, encoder_hidden_states=encoder_hidden_states).sample
            if do_guidance:
                pred_uncond, pred_cond = model_pred.chunk(2)
                model_pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
                if guidance_rescale > 0:
                    model_pred = rescale_noise_cfg(model_pred, pred_cond, guidance_rescale=guidance_rescale)
            noisy_images = self.scheduler.step(model_pred, timesteps, noisy_images, **step_kwargs).prev_sample

        images = space_for(self.vae, self.unet.config.sample_size).decode(noisy_images)
        return ImagePipelineOutput(images=_to_output(images, output_type))

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        return text.encode_prompts(self.text_encoder, self.tokenizer, prompts, self.max_prompt_tokens, device=self.unet.device)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """diffusers layout plus t2ilab.json (vocabulary and provenance)."""
        super().save_pretrained(save_directory, **kwargs)
        meta = {"vocabulary": self.vocabulary, "checkpoint_path": self.checkpoint_path, "manifest": self.manifest, "weights": self.weights}
        (Path(save_directory) / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "T2IPipeline":
        """Load a folder written by save_pretrained, with its t2ilab.json metadata when present."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        meta_file = Path(pretrained_model_name_or_path) / METADATA_FILE
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            pipe.vocabulary = meta.get("vocabulary")
            pipe.checkpoint_path = meta.get("checkpoint_path")
            pipe.manifest = meta.get("manifest") or {}
            pipe.weights = meta.get("weights")
        return pipe


def _check_call_args(prompts, negative_prompt, steps, guidance_scale, guidance_rescale, seed, output_type):
    """Validate __call__ arguments; returns (seeds, negative prompts), one per prompt."""
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompts!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps must be ≥ 1, got {steps}")
    if guidance_scale < 1:
        raise ValueError(
            f"guidance_scale={guidance_scale}: guidance_scale < 1 has no meaning for classifier-free guidance; "
            f"use 1 to disable guidance"
        )
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1] (0 = off, 0.7 is the paper's value), got {guidance_rescale}")
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
    if isinstance(seed, int):
        seeds = [seed + k for k in range(len(prompts))]
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt or a single int")
    if negative_prompt is None or isinstance(negative_prompt, str):
        negatives = [negative_prompt or ""] * len(prompts)
    else:
        negatives = list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts; give one or one per prompt")
    return seeds, negatives


def _to_output(images: torch.Tensor, output_type: str):
    """[0, 1] images (decoded by the image space) -> PIL list, uint8 array (N, H, W, 3) or float tensor (N, 3, H, W)."""
    if output_type == "pt":
        return images.cpu()
    array = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return array
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def check_prompt(pipe: T2IPipeline, prompt: str) -> dict:
    """Problems with a prompt before sampling: unknown words, truncation, control characters, emptiness."""
    cleaned, removed = clean_prompt(prompt)
    problems = []
    if removed:
        problems.append(f"removed {removed} control character(s) from the prompt")
    if not cleaned.strip():
        problems.append('empty prompt: this samples the unconditional model (the "" caption of caption dropout)')
    unknown = text.unknown_words(cleaned, pipe.vocabulary) if pipe.vocabulary is not None else []
    if pipe.vocabulary is None:
        problems.append("no vocabulary.json with this model: unknown words cannot be checked")
    elif unknown:
        problems.append(unknown_words_message(unknown))
    truncation = text.truncation_warning(pipe.tokenizer, cleaned, pipe.max_prompt_tokens)
    if truncation:
        problems.append(truncation)
    return {"prompt": cleaned, "unknown_words": unknown, "truncation": truncation, "problems": problems}


# ---------------------------------------------------------------- loading a training checkpoint


def load_pipeline(
    checkpoint: str | Path,
    weights: str = "ema",
    scheduler: str | None = None,
    device: str | torch.device | None = None,
    output_dir: str | Path | None = None,
) -> T2IPipeline:
    """A ready pipeline from a checkpoint folder, an output dir, or 'latest' (with output_dir).

    scheduler None: dpmsolver++ for a diffusion checkpoint, flow_euler for a flow-matching one (its scheduler/ says which).
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; valid names: {', '.join(SCHEDULERS)}")
    path = resolve_checkpoint(checkpoint, output_dir)
    manifest = read_manifest(path)
    unet_part = "unet"
    if weights == "ema":
        if (path / "unet_ema").is_dir():
            unet_part = "unet_ema"
        else:
            warnings.warn(f"checkpoint {path} has no unet_ema/ (training.use_ema was off); using the raw weights", CheckpointWarning, stacklevel=2)
            weights = "raw"

    unet = _load_part(path, unet_part, UNet2DConditionModel.from_pretrained)
    if unet_part == "unet_ema":
        unet = _without_ema_counters(unet)
    text_encoder = _load_part(path, "text_encoder", AutoModel.from_pretrained)
    tokenizer = _load_part(path, "tokenizer", _load_tokenizer)
    training_scheduler = _load_part(path, "scheduler", _load_training_scheduler)
    if scheduler is None:
        scheduler = "flow_euler" if objective_of(training_scheduler.config) == "flow_matching" else "dpmsolver++"
    try:
        sampler = make_scheduler(scheduler, training_scheduler.config)
    except ValueError as exc:
        raise ValueError(f"checkpoint {path}: {exc}") from None
    max_tokens = _trained_max_tokens(path)
    if max_tokens and max_tokens < tokenizer.model_max_length:
        # Training padded prompts to model.max_caption_tokens and the UNet attends to padding too: match it.
        tokenizer.model_max_length = max_tokens

    vae = _load_vae(path, manifest.get("vae"))
    pipe = T2IPipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                       scheduler=sampler, vae=vae)
    pipe.checkpoint_path = str(path)
    pipe.manifest = {k: manifest.get(k) for k in ("epoch", "global_step", "end_of_epoch", "vae")}
    pipe.vocabulary = _read_vocabulary(path)
    pipe.weights = weights
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        pipe.to(device)
    except (RuntimeError, AssertionError) as exc:  # "Torch not compiled with CUDA enabled", "Invalid device string"
        raise ValueError(f"device {str(device)!r} is not usable here ({str(exc).splitlines()[0]}); try cpu") from None
    pipe.unet.eval()
    pipe.text_encoder.eval()
    return pipe


def _load_vae(path: Path, recorded: dict | None):
    """The VAE a latent checkpoint names (None in pixel space), refused when its files are not the ones trained with."""
    if not recorded:
        return None
    from t2ilab.training.latent_space import check_same_vae, load_vae, vae_hash

    vae = load_vae(recorded["path"])
    check_same_vae(path, recorded, {"path": recorded["path"], "sha256": vae_hash(vae)}, "sample")
    return vae


def _load_part(path: Path, part: str, loader):
    """Load one model part, turning any failure into a CheckpointError naming the file."""
    folder = path / part
    files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    old = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    # The EMA config carries decay counters that UNet2DConditionModel does not take; that notice is noise here,
    # and so is a progress bar for loading a few MB.
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        return loader(folder)
    except Exception as exc:  # safetensors, json, OSError ...: all mean "this part is unusable"
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"checkpoint {path}: could not load {part}/ (files: {', '.join(files) or 'none'}): {first_line}. "
            f"The file is corrupt or not from t2ilab; use another checkpoint or re-copy this one."
        ) from None
    finally:
        diffusers_logging.set_verbosity(old[0])
        transformers_logging.set_verbosity(old[1])
        if bars:
            transformers_logging.enable_progress_bar()


def _without_ema_counters(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """The same weights under a plain UNet config (EMAModel.save_pretrained adds decay counters to it)."""
    accepted = inspect.signature(UNet2DConditionModel.__init__).parameters
    clean = UNet2DConditionModel.from_config({k: v for k, v in unet.config.items() if k in accepted})
    clean.load_state_dict(unet.state_dict())
    return clean


def _load_training_scheduler(folder: Path):
    """The checkpoint's training scheduler: DDPMScheduler (diffusion) or FlowMatchEulerDiscreteScheduler (flow matching)."""
    config = FlowMatchEulerDiscreteScheduler.load_config(folder)  # ConfigMixin.load_config: the JSON, any class
    cls = FlowMatchEulerDiscreteScheduler if objective_of(config) == "flow_matching" else DDPMScheduler
    return cls.from_pretrained(folder)


def _load_tokenizer(folder: Path):
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):
        return PreTrainedTokenizerFast.from_pretrained(folder)


def _read_vocabulary(path: Path) -> list[str] | None:
    vocab_file = path / "vocabulary.json"
    if not vocab_file.is_file():
        return None
    try:
        return list(json.loads(vocab_file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: vocabulary.json is unreadable ({exc})") from None


def _trained_max_tokens(path: Path) -> int | None:
    """model.max_caption_tokens from the checkpoint's config.yaml (read leniently: only this key matters)."""
    import yaml

    try:
        raw = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
        value = raw.get("model", {}).get("max_caption_tokens")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None
