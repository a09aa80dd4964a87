"""Training objectives: the regression target, Min-SNR-gamma weights, the per-sample loss, the timestep draws.

Two objectives (noise.objective): diffusion (DDPM forward process, epsilon or v target, integer timesteps in [0, T)) and
flow matching (rectified flow, Esser et al. 2024: x_t = (1-t) x0 + t noise, target noise - x0, float timesteps t * T).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from t2ilab.training.model import with_coord_channels


def is_flow_matching(noise_scheduler) -> bool:
    """Whether the training scheduler describes rectified flow (noise.objective: flow_matching)."""
    return isinstance(noise_scheduler, FlowMatchEulerDiscreteScheduler)


def draw_timesteps(noise_cfg, n: int, generator: torch.Generator) -> torch.Tensor:
    """Training timesteps from `generator`: uniform integers in [0, T) for diffusion; for flow matching
    t * T with t logit-normal (t = sigmoid(u), u ~ N(logit_mean, logit_std)), Esser et al. 2024 section 3.1."""
    T = noise_cfg.num_train_timesteps
    if noise_cfg.objective == "diffusion":
        return torch.randint(0, T, (n,), generator=generator)
    u = noise_cfg.logit_mean + noise_cfg.logit_std * torch.randn(n, generator=generator)
    return torch.sigmoid(u).clamp(max=1 - 1e-6) * T  # t < 1 keeps every draw inside the last loss bin


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


def stratified_timesteps(n: int, num_train_timesteps: int, generator: torch.Generator, continuous: bool = False) -> torch.Tensor:
    """n timesteps, one in each of n equal strata of [0, T), shuffled: a low-variance fixed validation set.

    Integers for diffusion; with `continuous` (flow matching) floats t * T for t stratified in [0, 1).
    """
    strata = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator, dtype=torch.float64)) / n
    if continuous:
        t = (strata * num_train_timesteps).float().clamp(max=num_train_timesteps * (1 - 1e-6))
    else:
        t = (strata * num_train_timesteps).long().clamp(max=num_train_timesteps - 1)
    return t[torch.randperm(n, generator=generator)]


def per_sample_loss(unet, noise_scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                    encoder_hidden_states: torch.Tensor, alphas_cumprod: torch.Tensor | None, snr_gamma: float | None,
                    autocast=nullcontext, coord_channels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective per sample: plain MSE to the target and its weight (loss = mean(mse * weight)).

    Diffusion: the epsilon or v target and its Min-SNR weight. Flow matching: x_t = (1-t) x0 + t noise at
    t = timesteps / T, target noise - x0 (the velocity FlowMatchEulerDiscreteScheduler integrates), weight 1.
    `coord_channels`: the UNet also reads x and y (CoordConv, model.with_coord_channels).
    """
    if is_flow_matching(noise_scheduler):
        t = (timesteps.float() / noise_scheduler.config.num_train_timesteps).view(-1, 1, 1, 1)
        noisy_images = (1 - t) * clean + t * noise
        target = noise - clean
        weights = torch.ones_like(timesteps, dtype=torch.float32)
    else:
        noisy_images = noise_scheduler.add_noise(clean, noise, timesteps)
        target = diffusion_target(noise_scheduler, clean, noise, timesteps)
        weights = loss_weights(alphas_cumprod, timesteps, noise_scheduler.config.prediction_type, snr_gamma)
    model_input = with_coord_channels(noisy_images) if coord_channels else noisy_images
    with autocast():
        model_pred = unet(model_input, timesteps, encoder_hidden_states=encoder_hidden_states).sample
    mse = ((model_pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    return mse, weights
