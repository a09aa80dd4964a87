"""Test helpers: a tiny, untrained checkpoint in the trainer's layout, built in about a second."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.training_utils import EMAModel
from t2ilab.config import load_config
from t2ilab.training import checkpoint, model, text
from t2ilab.training.representation import image_space

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"
CAPTIONS = [
    "a red circle",
    "three green triangles",
    "a blue square on the left",
    "two yellow squares",
    "a red circle above a blue triangle",
    "a green square on the right",
]


def make_tiny_checkpoint(root: Path, epoch: int = 2, ema: bool = True, seed: int = 0, overrides: list[str] | None = None) -> Path:
    """Write `root/checkpoint-epoch-NNNN` from random tiny-config weights (plus `--set` overrides); the EMA differs
    from the raw UNet."""
    torch.manual_seed(seed)
    cfg = load_config(TINY_CONFIG, overrides)
    text_encoder, tokenizer, _ = text.build_text_encoder(cfg.model, CAPTIONS)
    space = image_space(cfg)  # pixels, or the latents of model.vae when the overrides name one
    unet = model.build_unet(cfg.model, space.sample_size, cfg.model.text_hidden_size, space.channels)
    ema_model = None
    if ema:
        ema_model = EMAModel(unet.parameters(), model_cls=UNet2DConditionModel, model_config=unet.config)
        # Untrained EMA == raw weights; perturb it so tests can tell which weights were loaded.
        with torch.no_grad():
            for p in ema_model.shadow_params:
                p.add_(0.05 * torch.randn_like(p))
    scheduler = model.build_noise_scheduler(cfg.noise, steps_offset=1 if cfg.model.vae else 0)
    vocabulary = text.caption_vocabulary(CAPTIONS)
    return checkpoint.write_checkpoint(
        root,
        checkpoint.checkpoint_name(epoch),
        lambda d: checkpoint.save_model_parts(d, unet, ema_model, text_encoder, tokenizer, scheduler, vocabulary, cfg),
        manifest={"epoch": epoch, "global_step": 10 * epoch, "end_of_epoch": True,
                  **({"vae": space.identity} if space.identity else {})},
        modules=[unet, text_encoder],
    )


# The head of a `python -c` script run where `import t2ilab` fails (export tests: plain diffusers only).
WITHOUT_T2ILAB = r"""
import importlib.abc, json, sys

class NoT2ilab(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "t2ilab" or name.startswith("t2ilab."):
            raise ImportError("t2ilab is not importable in this test process")
        return None

sys.meta_path.insert(0, NoT2ilab())
import numpy as np
import torch
from diffusers import DiffusionPipeline

torch.set_num_threads(1)
"""
