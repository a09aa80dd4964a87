"""The validation loss: the training objective on the held-out split with fixed noise and stratified timesteps."""

from __future__ import annotations

import numpy as np
import torch

from t2ilab.training.losses import stratified_timesteps


@torch.no_grad()
def validation_loss(loss_fn, val_idx: np.ndarray, noise_shape, seed: int, repeats: int, num_train_timesteps: int,
                    bins: int, micro: int, device, continuous: bool = False) -> tuple[float, list[float | None]]:
    """Weighted objective (as in training) and plain MSE per timestep bin over `repeats` passes of `val_idx`.

    `loss_fn(idx, rows, timesteps, noise) -> (mse, weights)` runs the model on the device; the noise and timesteps
    come from a generator seeded once, so every epoch is judged on the same draws. `continuous`: flow matching's
    float timesteps (t stratified in [0, 1), times T).
    """
    if len(val_idx) == 0:
        return float("nan"), [None] * bins
    idx = torch.as_tensor(np.tile(val_idx, repeats))
    gen = torch.Generator().manual_seed(seed + 7919)
    timesteps = stratified_timesteps(len(idx), num_train_timesteps, gen, continuous)
    noise = torch.randn(noise_shape(len(idx)), generator=gen)
    sums, counts, weighted = np.zeros(bins), np.zeros(bins), 0.0
    for start in range(0, len(idx), micro):
        sl = slice(start, start + micro)
        mse, weights = loss_fn(idx[sl].to(device), idx[sl].to(device), timesteps[sl].to(device), noise[sl].to(device))
        weighted += float((mse * weights).sum())
        which = (timesteps[sl] * bins // num_train_timesteps).long().numpy()
        np.add.at(sums, which, mse.double().cpu().numpy())
        np.add.at(counts, which, 1)
    per_bin = [float(s / c) if c else None for s, c in zip(sums, counts)]
    return weighted / len(idx), per_bin
