"""The denoiser and its noise schedule: a diffusers UNet2DConditionModel (on pixels or latents) and a DDPMScheduler."""

from __future__ import annotations

from diffusers import DDPMScheduler, UNet2DConditionModel

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
        in_channels=channels,
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


def build_noise_scheduler(noise_cfg: NoiseConfig, steps_offset: int = 0) -> DDPMScheduler:
    """The training-time forward process; samplers are built from its config so betas always match.

    steps_offset only moves the sampling timesteps ("leading" spacing); latent runs use 1, Stable Diffusion's value,
    because StableDiffusionPipeline rewrites any other value to 1 and the export must sample what t2ilab samples.
    """
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
