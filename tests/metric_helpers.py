"""Tiny, randomly initialised stand-ins for the weights a user points the standard metrics at: a CLIP model with
its processor, and TorchScript feature models (Inception's call signature, and a plain extractor), saved to a folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from t2ilab.training import text
from torch import nn


def make_tiny_clip(folder: Path, captions: list[str], seed: int = 0) -> Path:
    """A CLIPModel (32-wide, 2 layers) and CLIPProcessor saved to `folder`, loadable with local_files_only."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tokenizer = text.build_tokenizer(captions, 16)
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "vocab_size": len(vocab), "max_position_embeddings": 16, "eos_token_id": vocab["[EOS]"],
                     "bos_token_id": vocab["[BOS]"], "pad_token_id": vocab["[PAD]"]},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    CLIPModel(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class _TinyInception(nn.Module):
    """Inception's TorchScript call signature (images 0..255, return_features) on a random conv net."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten())

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        features = self.net(x / 127.5 - 1.0)
        return features if return_features else features.sum(1, keepdim=True)


class _TinyExtractor(nn.Module):
    """A plain feature extractor: float images in [0, 1] -> (N, 24)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 12, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.colour = nn.AdaptiveAvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x), self.colour(x).flatten(1)], dim=1)


def make_tiny_torchscript(path: Path, kind: str = "inception", seed: int = 0) -> Path:
    """torch.jit.save a tiny random feature model ("inception" signature or a plain "extractor") to `path`."""
    torch.manual_seed(seed)
    module = _TinyInception() if kind == "inception" else _TinyExtractor()
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path
