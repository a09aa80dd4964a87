"""T2IPipeline behaviour on a tiny random checkpoint: seeds, samplers, guidance, weights, round trips, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from helpers import make_tiny_checkpoint
from PIL import Image
from t2ilab.config import OBJECTIVE_SCHEDULERS
from t2ilab.sampling.pipeline import (
    CheckpointWarning,
    T2IPipeline,
    check_prompt,
    load_pipeline,
    make_scheduler,
)
from t2ilab.training.checkpoint import CheckpointError

PROMPTS = ["a red circle", "two yellow squares", "a blue square on the left"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Other processes share the CPU; one thread avoids OpenMP spinning that makes tiny models 100x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def pipe(ckpt):
    return load_pipeline(ckpt, device="cpu")


def with_scheduler(pipe: T2IPipeline, name: str, **config) -> T2IPipeline:
    """A pipeline sharing pipe's models with its own sampler (so tests do not change the shared one)."""
    training = {**pipe.scheduler.config, **config}
    return T2IPipeline(unet=pipe.unet, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, scheduler=make_scheduler(name, training))


def sample(pipe, prompt=PROMPTS, **kw) -> torch.Tensor:
    kw.setdefault("num_inference_steps", 4)
    return pipe(prompt, output_type="pt", **kw).images


def test_same_seed_gives_same_images(pipe):
    assert torch.equal(sample(pipe, seed=7), sample(pipe, seed=7))
    assert not torch.equal(sample(pipe, seed=7), sample(pipe, seed=8))


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++", "ddpm", "euler_ancestral"])
def test_image_k_of_a_batch_equals_its_seed_alone(pipe, name, monkeypatch):
    # Exact for the pipeline's own randomness (initial noise, sampler noise): one generator per image. CPU kernels
    # (oneDNN conv, MKL gemv vs gemm) round differently per batch size, so the UNet runs one image at a time here.
    p = with_scheduler(pipe, name)
    batched_forward = p.unet.forward

    def per_image(sample, timestep, encoder_hidden_states, **kw):
        outs = [batched_forward(sample[i : i + 1], timestep, encoder_hidden_states=encoder_hidden_states[i : i + 1], **kw).sample for i in range(len(sample))]
        return UNet2DConditionOutput(sample=torch.cat(outs))

    monkeypatch.setattr(p.unet, "forward", per_image)
    batch = sample(p, seed=[11, 12, 13], num_inference_steps=6)
    alone = sample(p, PROMPTS[1], seed=12, num_inference_steps=6)
    assert torch.equal(batch[1], alone[0])
    assert torch.equal(sample(p, seed=11, num_inference_steps=6), batch)  # int seed s means seeds s, s+1, s+2


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++", "ddpm"])
def test_batched_unet_matches_alone_to_rounding(pipe, name):
    p = with_scheduler(pipe, name)
    batch = sample(p, seed=[11, 12, 13], num_inference_steps=6)
    alone = sample(p, PROMPTS[1], seed=12, num_inference_steps=6)
    torch.testing.assert_close(batch[1], alone[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("name", OBJECTIVE_SCHEDULERS["diffusion"])  # flow_euler: tests/test_objectives.py
def test_every_scheduler_runs_and_keeps_training_betas(pipe, name, prediction_type):
    p = with_scheduler(pipe, name, prediction_type=prediction_type)
    assert p.scheduler.config.prediction_type == prediction_type
    assert torch.equal(p.scheduler.betas, pipe.scheduler.betas)
    images = p(PROMPTS[:2], num_inference_steps=4, output_type="np").images
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert images.std() > 0


def test_output_types_agree(pipe):
    pil = pipe(PROMPTS[:2], num_inference_steps=3, output_type="pil").images
    arr = pipe(PROMPTS[:2], num_inference_steps=3, output_type="np").images
    pt = pipe(PROMPTS[:2], num_inference_steps=3, output_type="pt").images
    assert all(isinstance(im, Image.Image) and im.size == (16, 16) for im in pil)
    assert np.array_equal(np.stack([np.asarray(im) for im in pil]), arr)
    assert pt.shape == (2, 3, 16, 16) and pt.dtype == torch.float32 and 0 <= pt.min() and pt.max() <= 1
    assert np.array_equal((pt * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), arr)


def test_guidance_settings_change_images(pipe):
    plain = sample(pipe, guidance_scale=1.0)
    guided = sample(pipe, guidance_scale=3.0)
    assert not torch.equal(plain, guided)
    assert not torch.equal(guided, sample(pipe, guidance_scale=3.0, guidance_rescale=0.7))
    assert not torch.equal(guided, sample(pipe, guidance_scale=3.0, negative_prompt="a green square"))
    # guidance 1 skips the unconditional pass entirely, so a negative prompt has no effect there
    assert torch.equal(plain, sample(pipe, guidance_scale=1.0, negative_prompt="a green square"))


def test_save_pretrained_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    loaded = T2IPipeline.from_pretrained(tmp_path / "saved")
    assert type(loaded.scheduler) is type(pipe.scheduler)
    assert loaded.vocabulary == pipe.vocabulary and loaded.manifest == pipe.manifest and loaded.weights == "ema"
    assert torch.equal(sample(pipe, seed=3), sample(loaded, seed=3))


def test_ema_and_raw_weights_give_different_images(ckpt, pipe):
    raw = load_pipeline(ckpt, weights="raw", device="cpu")
    assert (pipe.weights, raw.weights) == ("ema", "raw")
    assert pipe.manifest["epoch"] == 2 and pipe.manifest["global_step"] == 20
    assert pipe.checkpoint_path == str(ckpt)
    assert not torch.equal(sample(pipe), sample(raw))


def test_missing_ema_falls_back_to_raw_with_a_warning(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path, ema=False)
    with pytest.warns(CheckpointWarning, match="no unet_ema"):
        p = load_pipeline(ckpt, device="cpu")
    assert p.weights == "raw"


def test_latest_and_output_dir_resolve_to_the_newest_checkpoint(tmp_path):
    make_tiny_checkpoint(tmp_path, epoch=2)
    newest = make_tiny_checkpoint(tmp_path, epoch=4)
    assert load_pipeline("latest", output_dir=tmp_path, device="cpu").checkpoint_path == str(newest)
    assert load_pipeline(tmp_path, device="cpu").manifest["epoch"] == 4


def test_check_prompt_reports_unknown_words(pipe):
    check = check_prompt(pipe, "a cat sitting on a chair")
    assert check["unknown_words"] == ["cat", "sitting", "chair"]
    assert any("never saw these words in training captions: cat, sitting, chair" in p for p in check["problems"])
    assert check_prompt(pipe, "a red circle") == {"prompt": "a red circle", "unknown_words": [], "truncation": None, "problems": []}


def test_check_prompt_flags_empty_control_characters_and_long_prompts(pipe):
    assert "empty prompt" in check_prompt(pipe, "")["problems"][0]
    check = check_prompt(pipe, "a red\x00 circle\x07")
    assert check["prompt"] == "a red circle" and "control character" in check["problems"][0]
    assert check["unknown_words"] == []
    long_prompt = "a red circle " * 800  # ~10 000 characters
    assert "only the first 16 are read" in check_prompt(pipe, long_prompt)["truncation"]
    # None of these crash the pipeline; control characters are stripped before encoding.
    images = sample(pipe, ["", "a red\x00 circle", long_prompt], num_inference_steps=2)
    assert images.shape == (3, 3, 16, 16)
    stripped = sample(pipe, "a red circle", seed=1, num_inference_steps=2)[0]
    torch.testing.assert_close(images[1], stripped, atol=1e-4, rtol=0)  # batched vs alone: see test above


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_inference_steps": 0}, "num_inference_steps must be ≥ 1, got 0"),
        ({"guidance_scale": 0.5}, "guidance_scale < 1 has no meaning for classifier-free guidance; use 1 to disable"),
        ({"seed": [1, 2]}, "got 2 seeds for 3 prompts"),
        ({"guidance_rescale": 1.5}, "guidance_rescale must be in [0, 1]"),
        ({"output_type": "latent"}, "output_type must be"),
    ],
)
def test_bad_call_arguments_say_what_is_wrong(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        pipe(PROMPTS, **kwargs)


def test_unknown_scheduler_lists_valid_names(ckpt, pipe):
    with pytest.raises(ValueError, match=r"unknown scheduler 'plms'; valid names: ddpm, ddim, dpmsolver\+\+, unipc"):
        make_scheduler("plms", pipe.scheduler.config)
    with pytest.raises(ValueError, match="valid names"):
        load_pipeline(ckpt, scheduler="plms")
    with pytest.raises(ValueError, match="weights must be 'ema' or 'raw', got 'best'"):
        load_pipeline(ckpt, weights="best")


def test_missing_and_partial_checkpoints_raise_checkpoint_error(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_pipeline(tmp_path / "nope")
    partial = shutil.copytree(ckpt, tmp_path / ckpt.name)
    (partial / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="partial"):
        load_pipeline(partial)
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_pipeline(tmp_path / "empty-run")


def test_garbage_weights_file_names_the_file(ckpt, tmp_path):
    broken = shutil.copytree(ckpt, tmp_path / ckpt.name)
    (broken / "unet_ema" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file" * 10)
    with pytest.raises(CheckpointError, match=r"could not load unet_ema/ \(files: config.json, diffusion_pytorch_model.safetensors\)") as info:
        load_pipeline(broken)
    assert info.value.__cause__ is None and "\n" not in str(info.value)
