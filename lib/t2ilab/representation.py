"""The image representation the UNet works in: encode images for training, decode its output for viewing.

Pixel space today (RGB in [-1, 1] at the data resolution); a VAE's latent space plugs in here with the same three
members (channels, sample_size, encode/decode), so the trainer, sampler and checkpoints never ask which it is.
"""

from __future__ import annotations

import torch

from t2ilab.data import to_model_range


class PixelSpace:
    """RGB pixels: the UNet denoises the image itself."""

    name = "pixels"
    channels = 3

    def __init__(self, resolution: int):
        self.sample_size = resolution

    def encode(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 images (N, 3, H, W) -> the model's input range."""
        return to_model_range(images_uint8)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """The model's output range -> float images in [0, 1]."""
        return (samples.float().clamp(-1, 1) + 1) / 2

    def noise_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.channels, self.sample_size, self.sample_size)


def image_space(resolution: int) -> PixelSpace:
    """The representation a run's config asks for."""
    return PixelSpace(resolution)
