"""The denoiser and its noise schedule: a diffusers UNet2DConditionModel (on pixels or latents, optionally with
CoordConv channels) and a DDPMScheduler (diffusion) or FlowMatchEulerDiscreteScheduler (flow matching)."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel

from t2ilab.config import ModelConfig, NoiseConfig


def build_unet(model_cfg: ModelConfig, resolution: int, cross_attention_dim: int, channels: int = 3) -> UNet2DConditionModel:
    """A small text-conditioned UNet on `channels` x `resolution`^2 inputs (the image space's channels and sample size);
    attention levels get cross-attention to the caption."""
    levels = len(model_cfg.block_out_channels)
    if resolution % (2 ** (levels - 1)):
        where = "data.resolution" if channels == 3 and not model_cfg.vae else "the latent side (data.resolution / the VAE's downsampling)"
        raise ValueError(
            f"{where}={resolution} must be divisible by 2^(levels-1)={2 ** (levels - 1)} "
            f"for {levels} UNet levels (model.block_out_channels)"
        )
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in model_cfg.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(model_cfg.attention_levels))
    # diffusers' addition_embed_type="text" pools the caption (AttentionPooling) into the timestep embedding, so every
    # resnet block sees the caption, not only the attention levels: global attributes (colour, shape) are learnt sooner.
    pooled = {"addition_embed_type": "text", "addition_embed_type_num_heads": model_cfg.text_heads} \
        if model_cfg.pooled_text_embedding else {}
    return UNet2DConditionModel(
        sample_size=resolution,
        in_channels=channels + (COORD_CHANNELS if model_cfg.coord_channels else 0),
        out_channels=channels,
        block_out_channels=tuple(model_cfg.block_out_channels),
        layers_per_block=model_cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=model_cfg.attention_head_dim,
        norm_num_groups=model_cfg.norm_num_groups,
        **pooled,
    )


COORD_CHANNELS = 2  # CoordConv: x and y


def has_coord_channels(unet_config) -> bool:
    """Whether a UNet reads CoordConv channels: its input has the 2 coordinate channels its output lacks."""
    return unet_config.in_channels == unet_config.out_channels + COORD_CHANNELS


def with_coord_channels(x: torch.Tensor) -> torch.Tensor:
    """`x` (N, C, H, W) with two channels appended holding the column and row position in [-1, 1] (CoordConv,
    Liu et al. 2018, https://arxiv.org/abs/1807.03247): the one place training and sampling add them."""
    n, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([x, xs, ys], dim=1)


def build_noise_scheduler(noise_cfg: NoiseConfig, steps_offset: int = 0) -> DDPMScheduler | FlowMatchEulerDiscreteScheduler:
    """The training-time forward process; samplers are built from its config so betas always match.

    Flow matching: a FlowMatchEulerDiscreteScheduler (shift 1, timesteps = t * num_train_timesteps); saved in the
    checkpoint's scheduler/, its class is what tells load_pipeline the objective.

    steps_offset only moves the sampling timesteps ("leading" spacing); latent runs use 1, Stable Diffusion's value,
    because StableDiffusionPipeline rewrites any other value to 1 and the export must sample what t2ilab samples.
    """
    if noise_cfg.objective == "flow_matching":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=noise_cfg.num_train_timesteps, shift=1.0)
    return DDPMScheduler(
        steps_offset=steps_offset,
        num_train_timesteps=noise_cfg.num_train_timesteps,
        beta_schedule=noise_cfg.beta_schedule,
        beta_start=noise_cfg.beta_start,
        beta_end=noise_cfg.beta_end,
        prediction_type=noise_cfg.prediction_type,
        rescale_betas_zero_snr=noise_cfg.rescale_betas_zero_snr,
        clip_sample=False,
        timestep_spacing="trailing" if noise_cfg.rescale_betas_zero_snr else "leading",
    )


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
