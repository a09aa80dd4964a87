"""Latent space: a frozen diffusers AutoencoderKL (model.vae) encodes images once, the UNet denoises its latents.

latents = (mode of the VAE's posterior - shift_factor) * scaling_factor, cached beside the data cache under a key
that holds the data fingerprint and the VAE's identity (its path and a hash of its config and weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from t2ilab.config import ConfigError
from t2ilab.datasets.data import DataWarning, to_model_range
from t2ilab.training.checkpoint import CheckpointError

LATENTS_FILE = "latents.safetensors"
LATENTS_FORMAT = 1  # bump when encoding changes: old latent caches are then ignored
ENCODE_BATCH = 16  # images per VAE forward pass while filling the cache


def load_vae(name: str):
    """A frozen, eval-mode AutoencoderKL from a folder or the local hub cache (never downloads), or a ConfigError."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(name, local_files_only=True)
    except Exception as exc:  # OSError (missing files), ValueError / EnvironmentError (not a VAE), safetensors errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConfigError(
            f"model.vae={name!r} could not be loaded as a diffusers AutoencoderKL ({first}). Give a folder with "
            f"config.json and diffusion_pytorch_model.safetensors (what AutoencoderKL.save_pretrained writes, e.g. the "
            f"vae/ folder of a Stable Diffusion download) or a hub id already in the local cache; t2ilab never "
            f"downloads. Remove model.vae to train in pixel space."
        ) from None
    vae.requires_grad_(False)
    vae.eval()
    return vae


def vae_location(name: str) -> str:
    """model.vae as recorded: an absolute path for a folder, the hub id otherwise."""
    path = Path(name).expanduser()
    return os.path.abspath(path) if path.exists() else name


def vae_hash(vae) -> str:
    """sha256 of the VAE's config (without diffusers' bookkeeping keys) and of every weight tensor, by name."""
    digest = hashlib.sha256()
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class LatentSpace:
    """A VAE's latents: the UNet denoises (channels, resolution / 2^(levels-1)) latents, decoded for viewing."""

    name = "latents"

    def __init__(self, vae, resolution: int, location: str):
        self.vae, self.resolution, self.location = vae, resolution, location
        self.channels = vae.config.latent_channels
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)  # the VAE's downsampling
        if resolution % self.factor:
            raise ConfigError(f"data.resolution={resolution} must be divisible by {self.factor}, the downsampling of "
                              f"model.vae={location!r}")
        self.sample_size = resolution // self.factor
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.from_cache: bool | None = None  # set by cache(): whether the latents were read from the cache

    @cached_property
    def identity(self) -> dict:
        """What checkpoints record: the VAE's path and the hash of its config and weights."""
        return {"path": self.location, "sha256": vae_hash(self.vae), "scaling_factor": self.scaling_factor,
                "shift_factor": self.shift_factor}

    @torch.no_grad()
    def encode(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 3, H, W) -> scaled latents; the posterior's mode, so the cache is the same every time."""
        device = self.vae.device
        latents = self.vae.encode(to_model_range(images_uint8).to(device)).latent_dist.mode()
        # .contiguous(): the mode is a channel slice of the encoder's output, and a strided copy would make the UNet's
        # kernels round differently from latents read back from the cache (resume would not be bit-identical).
        return ((latents.float() - self.shift_factor) * self.scaling_factor).contiguous().cpu()

    @torch.no_grad()
    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> float RGB images in [0, 1] at the data resolution."""
        latents = samples.to(device=self.vae.device, dtype=self.vae.dtype) / self.scaling_factor + self.shift_factor
        pixels = self.vae.decode(latents).sample
        return (pixels.float().clamp(-1, 1) + 1) / 2

    def noise_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.channels, self.sample_size, self.sample_size)

    def describe(self) -> str:
        where = "read from the latent cache" if self.from_cache else "encoded once and cached"
        return f"latent space {self.channels}x{self.sample_size}x{self.sample_size} of model.vae={self.location} ({where})"

    def model_input(self, stored: torch.Tensor) -> torch.Tensor:
        """A batch of what cache() returned -> the UNet's clean input: the latents themselves."""
        return stored

    def cache(self, ds, cache_dir: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """Every image of `ds` encoded once (float32 latents on the CPU), read from or written to the latent cache."""
        key = {"format": LATENTS_FORMAT, "data": ds.fingerprint, "vae": self.location,
               "vae_sha256": self.identity["sha256"], "resolution": self.resolution}
        folder = Path(cache_dir) / ("latents-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16])
        expected = (len(ds), *self.noise_shape(1)[1:])
        latents = _read_latents(folder, expected)
        self.from_cache = latents is not None
        if latents is None:
            self.vae.to(device)
            latents = torch.cat([self.encode(ds.images[i:i + ENCODE_BATCH]) for i in range(0, len(ds), ENCODE_BATCH)])
            self.vae.to("cpu")
            _write_latents(folder, latents, key)
        return latents


def _read_latents(folder: Path, shape: tuple) -> torch.Tensor | None:
    if not (folder / LATENTS_FILE).is_file():
        return None
    try:
        latents = load_file(str(folder / LATENTS_FILE))["latents"]
        if tuple(latents.shape) != shape or latents.dtype != torch.float32:
            raise ValueError(f"latents {tuple(latents.shape)} {latents.dtype}, expected {shape} float32")
    except Exception as exc:  # a truncated or foreign file: encode again
        warnings.warn(f"ignoring damaged latent cache {folder} ({exc}); encoding again", DataWarning, stacklevel=3)
        return None
    return latents


def _write_latents(folder: Path, latents: torch.Tensor, key: dict) -> None:
    """Written to a temporary file and renamed, so a crash never leaves half a cache."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "key.json").write_text(json.dumps(key, indent=2), encoding="utf-8")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        os.close(fd)
        save_file({"latents": latents.contiguous()}, tmp)
        os.replace(tmp, folder / LATENTS_FILE)
    except OSError as exc:
        warnings.warn(f"could not write the latent cache {folder} ({exc}); continuing without it", DataWarning, stacklevel=3)


def check_same_vae(checkpoint: Path, recorded: dict | None, current: dict | None, doing: str) -> None:
    """Refuse to resume or sample a checkpoint with another VAE (or another image space) than it was trained with."""
    if recorded == current or (recorded and current and (recorded["path"], recorded["sha256"]) == (current["path"], current["sha256"])):
        return

    def describe(identity: dict | None) -> str:
        return "pixel space (no model.vae)" if not identity else f"model.vae={identity['path']!r} (sha256 {identity['sha256'][:12]})"

    raise CheckpointError(
        f"cannot {doing} {checkpoint}: it was trained with {describe(recorded)}, but {describe(current)} is given. "
        f"Latents of another VAE mean nothing to this UNet: restore that VAE (its folder and files unchanged) and use "
        f"the checkpoint's model.vae, or start a new run (another output_dir) with the new VAE."
    )
