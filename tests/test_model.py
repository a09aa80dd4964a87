"""Model options: the pooled caption embedding reaches the UNet, and runs trained with it (or with a text side of
word embeddings only) sample and resume."""

from __future__ import annotations

import torch
from helpers import TINY_CONFIG
from t2ilab.config import load_config
from t2ilab.sampling.pipeline import load_pipeline
from t2ilab.training.model import build_unet
from t2ilab.training.train import train


def test_pooled_caption_vector_changes_the_prediction():
    cfg = load_config(TINY_CONFIG, ["model.pooled_text_embedding=true"])
    torch.manual_seed(0)
    unet = build_unet(cfg.model, 16, cfg.model.text_hidden_size).eval()
    assert unet.config.addition_embed_type == "text" and unet.add_embedding is not None
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    text = torch.randn(2, cfg.model.max_caption_tokens, cfg.model.text_hidden_size)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=text).sample
        unet.add_embedding.proj.weight.add_(torch.randn_like(unet.add_embedding.proj.weight))  # only the pooled path
        after = unet(x, t, encoder_hidden_states=text).sample
    assert (before - after).abs().max() > 1e-3
    plain = build_unet(load_config(TINY_CONFIG).model, 16, cfg.model.text_hidden_size)
    assert plain.config.addition_embed_type is None


def test_a_pooled_run_samples_and_resumes(tiny_config):
    cfg = tiny_config("model.pooled_text_embedding=true")
    first = train(cfg, progress="none", stop_at_epoch=2)
    pipe = load_pipeline(first.last_checkpoint)
    assert pipe.unet.config.addition_embed_type == "text"
    images = pipe(["a red circle", "two blue squares"], seed=0, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 16, 16, 3)
    resumed = train(cfg, resume="latest", progress="none")
    assert resumed.global_step > first.global_step


def test_a_word_embedding_text_side_trains_samples_and_resumes(tiny_config):
    """model.text_layers=0: the scratch encoder is learned word + position embeddings with no transformer layer."""
    cfg = tiny_config("model.text_layers=0")
    first = train(cfg, progress="none", stop_at_epoch=1)
    pipe = load_pipeline(first.last_checkpoint)
    assert pipe.text_encoder.config.num_hidden_layers == 0 and len(pipe.text_encoder.encoder.layers) == 0
    embedded = pipe.text_encoder(**pipe.tokenizer(["a red circle", "a blue square"], return_tensors="pt")).last_hidden_state
    assert (embedded[0] - embedded[1]).abs().max() > 1e-3  # the caption still reaches the UNet
    images = pipe(["a red circle"], seed=0, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 16, 16, 3)
    assert train(cfg, resume="latest", progress="none").global_step > first.global_step
