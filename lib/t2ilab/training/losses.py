"""Diffusion training objectives: the regression target, Min-SNR-gamma weights, the per-sample loss, stratified timesteps."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def diffusion_target(noise_scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity v = sqrt(a)*eps - sqrt(1-a)*x0."""
    if noise_scheduler.config.prediction_type == "epsilon":
        return noise
    return noise_scheduler.get_velocity(clean, noise, timesteps)


def loss_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, prediction_type: str, snr_gamma: float | None) -> torch.Tensor:
    """Min-SNR-gamma per-sample weights (https://arxiv.org/abs/2303.09556); ones when snr_gamma is None.

    For epsilon the MSE is weighted by min(SNR, gamma) / SNR; for v-prediction by min(SNR, gamma) / (SNR + 1),
    which is the same weight expressed on the v target. At zero terminal SNR the last step has SNR 0, so the
    epsilon weight is defined as 1 there.
    """
    if snr_gamma is None:
        return torch.ones_like(timesteps, dtype=torch.float32)
    a = alphas_cumprod[timesteps].float()
    snr = a / (1 - a).clamp(min=1e-12)
    clipped = torch.minimum(snr, torch.full_like(snr, snr_gamma))
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return torch.where(snr > 0, clipped / snr.clamp(min=1e-12), torch.ones_like(snr))


def stratified_timesteps(n: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """n timesteps, one in each of n equal strata of [0, T), shuffled: a low-variance fixed validation set."""
    strata = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator, dtype=torch.float64)) / n
    t = (strata * num_train_timesteps).long().clamp(max=num_train_timesteps - 1)
    return t[torch.randperm(n, generator=generator)]


def per_sample_loss(unet, noise_scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                    encoder_hidden_states: torch.Tensor, alphas_cumprod: torch.Tensor, snr_gamma: float | None,
                    autocast=nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """The diffusion objective per sample: plain MSE to the target and its Min-SNR weight (loss = mean(mse * weight))."""
    noisy_images = noise_scheduler.add_noise(clean, noise, timesteps)
    with autocast():
        model_pred = unet(noisy_images, timesteps, encoder_hidden_states=encoder_hidden_states).sample
    target = diffusion_target(noise_scheduler, clean, noise, timesteps)
    mse = ((model_pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    weights = loss_weights(alphas_cumprod, timesteps, noise_scheduler.config.prediction_type, snr_gamma)
    return mse, weights
