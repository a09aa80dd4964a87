"""The randomness of a training step as a pure function of (seed, epoch, step): data order, noise, timesteps and
caption dropout. A resumed run draws exactly what an uninterrupted one would, so resume is bit-identical.
"""

from __future__ import annotations

import numpy as np
import torch

from t2ilab.config import Config
from t2ilab.training.losses import draw_timesteps


def epoch_order(train_idx: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The data order of one epoch: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(train_idx)


def step_generator(seed: int, global_step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + global_step)


def draw_batch(cfg: Config, space, order: np.ndarray, index: int, global_step: int, world: int, rank: int,
               empty_row: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image rows, caption rows, timesteps, noise) of this process's slice of global batch `index` of `order`.

    The whole global batch is drawn on every process from the same generator and then sliced, so the run is the
    same on any number of processes. Caption dropout swaps in `empty_row`, the "" caption."""
    t = cfg.training
    idx = torch.as_tensor(order[index * t.batch_size:(index + 1) * t.batch_size])
    gen = step_generator(t.seed, global_step)
    timesteps = draw_timesteps(cfg.noise, t.batch_size, gen)  # integer DDPM steps, or flow matching t * T
    noise = torch.randn(space.noise_shape(t.batch_size), generator=gen)
    if t.offset_noise > 0:
        noise = noise + t.offset_noise * torch.randn((t.batch_size, space.channels, 1, 1), generator=gen)
    drop = torch.rand(t.batch_size, generator=gen) < t.caption_dropout
    rows = torch.where(drop, torch.full_like(idx, empty_row), idx)
    share = t.batch_size // world
    mine = slice(rank * share, (rank + 1) * share)
    return idx[mine].to(device), rows[mine].to(device), timesteps[mine].to(device), noise[mine].to(device)
