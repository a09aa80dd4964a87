"""The image representation the UNet works in: encode images for training, decode its output for viewing.

Pixel space (RGB in [-1, 1] at the data resolution) or, with model.vae, a VAE's latent space (latent_space.py); both
have the same members (channels, sample_size, encode/decode, noise_shape, cache/model_input, identity), so the
trainer, sampler and checkpoints never ask which it is.
"""

from __future__ import annotations

import torch

from t2ilab.datasets.data import to_model_range


class PixelSpace:
    """RGB pixels: the UNet denoises the image itself."""

    name = "pixels"
    channels = 3
    identity = None  # nothing outside the checkpoint to pin down
    from_cache = None

    def __init__(self, resolution: int):
        self.sample_size = self.resolution = resolution

    def encode(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 images (N, 3, H, W) -> the model's input range."""
        return to_model_range(images_uint8)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """The model's output range -> float images in [0, 1]."""
        return (samples.float().clamp(-1, 1) + 1) / 2

    def noise_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.channels, self.sample_size, self.sample_size)

    def describe(self) -> str:
        return "pixel space"

    def cache(self, ds, cache_dir: str, device=None) -> torch.Tensor:
        """What training indexes: the uint8 images themselves (4x smaller than floats on the device)."""
        return ds.images

    def model_input(self, stored: torch.Tensor) -> torch.Tensor:
        """A batch of what cache() returned -> the UNet's clean input."""
        return self.encode(stored)


def space_name(cfg) -> str:
    """"pixels" or "latents" (model.vae set): which representation a config asks for, without loading a VAE."""
    return "latents" if cfg.model.vae else PixelSpace.name


def image_space(cfg):
    """The representation a run's config asks for: pixels, or the latents of model.vae."""
    if space_name(cfg) == PixelSpace.name:
        return PixelSpace(cfg.data.resolution)
    from t2ilab.training.latent_space import LatentSpace, load_vae, vae_location

    return LatentSpace(load_vae(cfg.model.vae), cfg.data.resolution, vae_location(cfg.model.vae))


def space_for(vae, sample_size: int):
    """The representation of a loaded pipeline: its VAE's latents (None = pixels) at the UNet's sample size."""
    if vae is None:
        return PixelSpace(sample_size)
    from t2ilab.training.latent_space import LatentSpace

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return LatentSpace(vae, sample_size * factor, location=str(getattr(vae.config, "_name_or_path", "") or "vae"))
