"""A t2ilab model as a diffusers pipeline: text-to-image in pixel space, without t2ilab installed.

Shipped inside every pixel-mode `t2ilab export` folder, whose model_index.json names it, so
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads it. Imports only torch, numpy, Pillow and
diffusers (the text encoder and tokenizer are transformers classes that diffusers loads by name). The denoising loop, prompt cleaning and output conversion are copied from t2ilab.sampling.pipeline.T2IPipeline;
tests/test_export.py checks both give the same image for the same seed.
"""

from __future__ import annotations

import inspect
import unicodedata

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput, UNet2DConditionModel
from PIL import Image


class T2ILabPipeline(DiffusionPipeline):
    """Text-to-image sampling with classifier-free guidance; the UNet denoises RGB pixels in [-1, 1] (no VAE)."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder,
        tokenizer,
        scheduler,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
    ):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        # The trained run's sampling defaults (sampling.* of its config), kept in model_index.json.
        self.register_to_config(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)

    @property
    def max_prompt_tokens(self) -> int:
        """Tokens the text encoder reads (the tokenizer's model_max_length is the trained caption length)."""
        n = min(self.tokenizer.model_max_length, 512)
        positions = getattr(self.text_encoder.config, "max_position_embeddings", None)
        return min(n, positions) if positions else n

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        seed: int | list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Images for `prompt`: PIL images, or float arrays/tensors in [0, 1] ("np": N,H,W,3; "pt": N,3,H,W).

        Randomness: `generator` (one, or one per prompt) as in diffusers, or `seed` as in t2ilab (image k uses its
        own CPU generator seeded with seed[k], or seed + k); neither means seed 0. Steps and guidance default to the
        trained run's sampling settings (see pipe.config).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance_scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        negatives = _check_call_args(prompts, negative_prompt, steps, guidance_scale, guidance_rescale, output_type)
        generators = _generators(seed, generator, len(prompts))
        prompts = [clean_prompt(p) for p in prompts]
        negatives = [clean_prompt(p) for p in negatives]
        device = self.unet.device
        do_guidance = guidance_scale > 1.0

        encoder_hidden_states = self._encode(prompts)
        if do_guidance:
            # One batched forward pass: [uncond; cond]. "" is what caption dropout trained as "no caption".
            encoder_hidden_states = torch.cat([self._encode(negatives), encoder_hidden_states])

        channels, size = self.unet.config.out_channels, self.unet.config.sample_size
        # A CoordConv UNet (model.coord_channels) reads 2 input channels more than it writes: x and y in [-1, 1].
        coords = self.unet.config.in_channels == channels + 2
        noise = torch.cat([torch.randn((1, channels, size, size), generator=g, device=g.device) for g in generators])
        flow = isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler)
        if flow:  # rectified flow (noise.objective: flow_matching): an even grid of t from 1 down to 0, timesteps t * 1000
            self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1].tolist(), device=device)
        else:
            self.scheduler.set_timesteps(steps, device=device)
        noisy_images = noise.to(device=device, dtype=self.unet.dtype) * getattr(self.scheduler, "init_noise_sigma", 1.0)
        # Stochastic samplers (ddpm, euler_ancestral) draw fresh noise each step: from each image's own generator.
        step_kwargs = {"generator": generators} if "generator" in inspect.signature(self.scheduler.step).parameters else {}

        for timesteps in self.progress_bar(self.scheduler.timesteps):
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

        images = _to_output(noisy_images, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        """Per-token hidden states; prompts padded to max_prompt_tokens with an attention mask, as in training."""
        n = self.max_prompt_tokens
        batch = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=n, return_tensors="pt")
        device = self.unet.device
        out = self.text_encoder(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        return out.last_hidden_state


def with_coord_channels(x: torch.Tensor) -> torch.Tensor:
    """`x` with two channels appended: column and row position in [-1, 1] (CoordConv), as t2ilab trains them."""
    n, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([x, xs, ys], dim=1)


def clean_prompt(prompt: str) -> str:
    """The prompt without control characters; tabs and newlines become spaces (as t2ilab does)."""
    out = []
    for ch in prompt:
        if unicodedata.category(ch) == "Cc":
            if ch in "\t\n\r\x0b\x0c":
                out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


# Copied from diffusers.guiders.guider_utils.rescale_noise_cfg (diffusers 0.42), so this file does not depend on
# where a diffusers version keeps it. Guidance rescale, https://arxiv.org/abs/2305.08891 section 3.4.
def rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale=0.0):
    """Rescale guided noise towards the conditional prediction's standard deviation."""
    std_text = noise_pred_text.std(dim=list(range(1, noise_pred_text.ndim)), keepdim=True)
    std_cfg = noise_cfg.std(dim=list(range(1, noise_cfg.ndim)), keepdim=True)
    noise_pred_rescaled = noise_cfg * (std_text / std_cfg)
    noise_cfg = guidance_rescale * noise_pred_rescaled + (1 - guidance_rescale) * noise_cfg
    return noise_cfg


def _check_call_args(prompts, negative_prompt, steps, guidance_scale, guidance_rescale, output_type) -> list[str]:
    """Validate __call__ arguments; returns one negative prompt per prompt."""
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompts!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
    if guidance_scale < 1:
        raise ValueError(f"guidance_scale={guidance_scale}: use 1 to disable classifier-free guidance, not less")
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1] (0 = off, 0.7 is the paper's value), got {guidance_rescale}")
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
    if negative_prompt is None or isinstance(negative_prompt, str):
        return [negative_prompt or ""] * len(prompts)
    negatives = list(negative_prompt)
    if len(negatives) != len(prompts):
        raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts; give one or one per prompt")
    return negatives


def _generators(seed, generator, n: int) -> list[torch.Generator]:
    """One generator per image: the given ones, or CPU generators seeded seed, seed+1, ... (t2ilab's convention)."""
    if generator is not None and seed is not None:
        raise ValueError("give seed or generator, not both")
    if generator is not None:
        generators = [generator] * n if isinstance(generator, torch.Generator) else list(generator)
        if len(generators) != n:
            raise ValueError(f"got {len(generators)} generators for {n} prompts; give one or one per prompt")
        return generators
    seed = 0 if seed is None else seed
    seeds = [seed + k for k in range(n)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} prompts; give one seed per prompt or a single int")
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def _to_output(images: torch.Tensor, output_type: str):
    """[-1, 1] pixels -> PIL list (rounded to uint8 as t2ilab does), float array (N, H, W, 3) or tensor (N, 3, H, W)."""
    images = (images.float().clamp(-1, 1) + 1) / 2
    if output_type == "pt":
        return images.cpu()
    if output_type == "np":
        return images.permute(0, 2, 3, 1).cpu().numpy()
    array = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]
