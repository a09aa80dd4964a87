"""Flow matching (noise.objective) and CoordConv (model.coord_channels): config checks, the loss against its formula,
sampling against a hand-written Euler loop, exact resume (configs/tiny.yaml, CPU; export: test_export.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from helpers import TINY_CONFIG, make_tiny_checkpoint
from t2ilab.config import ConfigError, load_config
from t2ilab.sampling.pipeline import SCHEDULERS, load_pipeline
from t2ilab.training.losses import draw_timesteps, per_sample_loss, stratified_timesteps
from t2ilab.training.model import build_noise_scheduler, build_unet, with_coord_channels
from t2ilab.training.train import step_generator, train
from test_train import assert_same_weights, loss_lines

FLOW = "noise.objective=flow_matching"
COORDS = "model.coord_channels=true"


# ---------------------------------------------------------------- config


def test_defaults_are_todays_diffusion_recipe():
    cfg = load_config(TINY_CONFIG)
    assert (cfg.noise.objective, cfg.training.snr_gamma, cfg.sampling.scheduler, cfg.model.coord_channels) == \
        ("diffusion", 5.0, "dpmsolver++", False)


def test_flow_matching_defaults_to_its_sampler_and_no_min_snr():
    cfg = load_config(TINY_CONFIG, [FLOW])
    assert (cfg.training.snr_gamma, cfg.sampling.scheduler) == (None, "flow_euler")


def test_min_snr_with_flow_matching_is_refused():
    with pytest.raises(ConfigError, match=r"training.snr_gamma=5.0.*flow_matching.*snr_gamma: null"):
        load_config(TINY_CONFIG, [FLOW, "training.snr_gamma=5.0"])


@pytest.mark.parametrize("overrides, valid", [([FLOW, "sampling.scheduler=ddim"], "valid: flow_euler"),
                                               (["sampling.scheduler=flow_euler"], "valid: ddpm, ddim, dpmsolver")])
def test_a_sampler_of_the_other_objective_is_refused_naming_the_valid_ones(overrides, valid):
    with pytest.raises(ConfigError, match=f"sampling.scheduler=.*{valid}"):
        load_config(TINY_CONFIG, overrides)


# ---------------------------------------------------------------- the objective


def test_flow_timesteps_are_logit_normal_draws_of_the_step_generator():
    cfg = load_config(TINY_CONFIG, [FLOW, "noise.logit_mean=0.5", "noise.logit_std=2.0"])
    t = draw_timesteps(cfg.noise, 4096, step_generator(0, 7))
    reference = torch.sigmoid(0.5 + 2.0 * torch.randn(4096, generator=step_generator(0, 7))) * 1000
    assert torch.allclose(t, reference.clamp(max=1000 * (1 - 1e-6)))
    logits = torch.logit(t / 1000)
    assert abs(float(logits.mean()) - 0.5) < 0.1 and abs(float(logits.std()) - 2.0) < 0.1
    assert torch.equal(draw_timesteps(cfg.noise, 16, step_generator(0, 7)), draw_timesteps(cfg.noise, 16, step_generator(0, 7)))


def test_flow_validation_timesteps_are_stratified_in_0_1():
    t = stratified_timesteps(10, 1000, torch.Generator().manual_seed(0), continuous=True)
    assert t.dtype == torch.float32
    assert sorted((t // 100).long().tolist()) == list(range(10))  # one in each tenth of [0, 1000)


class RecordingUNet(torch.nn.Module):
    """Stands in for the UNet: remembers its input and returns a fixed prediction."""

    def __init__(self, prediction: torch.Tensor):
        super().__init__()
        self.prediction, self.seen = prediction, None

    def forward(self, x, timesteps, encoder_hidden_states=None):
        self.seen = (x, timesteps)
        return SimpleNamespace(sample=self.prediction)


def test_flow_matching_loss_is_the_rectified_flow_formula():
    gen = torch.Generator().manual_seed(0)
    clean, noise, pred = (torch.randn(3, 3, 4, 4, generator=gen) for _ in range(3))
    timesteps = torch.tensor([0.0, 250.0, 900.0])
    unet = RecordingUNet(pred)
    scheduler = build_noise_scheduler(load_config(TINY_CONFIG, [FLOW]).noise)
    mse, weights = per_sample_loss(unet, scheduler, clean, noise, timesteps, None, None, None)
    t = torch.tensor([0.0, 0.25, 0.9]).view(-1, 1, 1, 1)
    assert torch.allclose(unet.seen[0], (1 - t) * clean + t * noise)
    assert torch.equal(unet.seen[1], timesteps)  # the UNet sees t * 1000
    assert torch.allclose(mse, ((pred - (noise - clean)) ** 2).mean(dim=(1, 2, 3)))
    assert torch.equal(weights, torch.ones(3))


def test_coord_channels_hold_x_and_y_in_minus_1_1():
    x = torch.zeros(2, 3, 4, 5)
    out = with_coord_channels(x)
    assert out.shape == (2, 5, 4, 5) and torch.equal(out[:, :3], x)
    assert torch.equal(out[0, 3, 0], torch.linspace(-1, 1, 5)) and torch.equal(out[0, 3, :, 2], torch.zeros(4))
    assert torch.equal(out[1, 4, :, 0], torch.linspace(-1, 1, 4)) and torch.allclose(out[1, 4, 1], torch.full((5,), -1 / 3))


def test_coordconv_unet_reads_two_more_channels_than_it_writes():
    cfg = load_config(TINY_CONFIG, [COORDS])
    unet = build_unet(cfg.model, 16, cfg.model.text_hidden_size, 3)
    assert (unet.config.in_channels, unet.config.out_channels) == (5, 3)
    coords = torch.zeros(1, 3, 16, 16)
    out = unet(with_coord_channels(coords), torch.tensor([10]), encoder_hidden_states=torch.zeros(1, 2, 32)).sample
    assert out.shape == (1, 3, 16, 16)


# ---------------------------------------------------------------- sampling


def test_flow_checkpoint_samples_with_flow_euler_by_default_and_refuses_ddim(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path, overrides=[FLOW])
    pipe = load_pipeline(ckpt, device="cpu")
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    with pytest.raises(ValueError, match="'ddim' cannot sample a model trained with noise.objective: flow_matching; valid for it: flow_euler"):
        load_pipeline(ckpt, scheduler="ddim", device="cpu")
    with pytest.raises(ValueError, match="valid for it: flow_euler"):
        pipe.set_scheduler("dpmsolver++")


def test_diffusion_checkpoint_refuses_flow_euler(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="'flow_euler' cannot sample .* diffusion; valid for it: ddpm, ddim, dpmsolver"):
        load_pipeline(ckpt, scheduler="flow_euler", device="cpu")
    assert set(SCHEDULERS) >= {"flow_euler", "dpmsolver++"}


@pytest.mark.parametrize("overrides", [[FLOW], [FLOW, COORDS]], ids=["flow", "flow+coords"])
def test_flow_sampling_is_the_euler_integral_of_the_velocity(tmp_path, overrides):
    """Pipeline with guidance 1 == x <- x + (t_next - t) * v(x, t * 1000) from t = 1 to 0 on an even grid."""
    pipe = load_pipeline(make_tiny_checkpoint(tmp_path, overrides=overrides), weights="raw", device="cpu")
    steps = 4
    images = pipe("a red circle", num_inference_steps=steps, guidance_scale=1.0, seed=3, output_type="pt").images
    emb = pipe._encode(["a red circle"])
    x = torch.randn((1, 3, 16, 16), generator=torch.Generator("cpu").manual_seed(3))
    grid = np.linspace(1.0, 0.0, steps + 1)
    with torch.no_grad():
        for t, t_next in zip(grid[:-1], grid[1:]):
            inp = with_coord_channels(x) if COORDS in overrides else x
            v = pipe.unet(inp, torch.tensor(t * 1000, dtype=torch.float32), encoder_hidden_states=emb).sample
            x = x + float(t_next - t) * v
    assert torch.allclose(images, ((x.clamp(-1, 1) + 1) / 2), atol=1e-5)


def test_coordconv_diffusion_checkpoint_samples_and_is_seed_deterministic(tmp_path):
    pipe = load_pipeline(make_tiny_checkpoint(tmp_path, overrides=[COORDS]), device="cpu")
    a = pipe(["a red circle", "two yellow squares"], num_inference_steps=3, seed=5, output_type="np").images
    b = pipe(["a red circle", "two yellow squares"], num_inference_steps=3, seed=5, output_type="np").images
    assert a.shape == (2, 16, 16, 3) and np.array_equal(a, b)


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("overrides", [[FLOW], [COORDS]], ids=["flow", "coords"])
def test_resume_is_bit_identical(tiny_config, overrides):
    straight = train(tiny_config(*overrides, output="straight"), progress="none")
    first = train(tiny_config(*overrides, output="resumed"), progress="none", max_steps=5)
    assert first.epoch < 4
    resumed = train(tiny_config(*overrides, output="resumed"), resume="latest", progress="none")
    assert (straight.epoch, straight.global_step) == (resumed.epoch, resumed.global_step) == (4, 12)
    for part in ("unet", "unet_ema", "text_encoder"):
        assert_same_weights(straight.last_checkpoint, resumed.last_checkpoint, part)
    assert loss_lines(straight.output_dir) == loss_lines(resumed.output_dir)


def test_flow_matching_run_records_its_objective_and_learns(tiny_config):
    """The checkpoint's scheduler/ says flow matching (so sampling needs no config), and the loss falls."""
    import json

    result = train(tiny_config(FLOW, COORDS, "training.num_epochs=8"), progress="none")
    saved = json.loads((result.last_checkpoint / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    pipe = load_pipeline(result.last_checkpoint, device="cpu")
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.unet.config.in_channels == 5
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if r["type"] == "val"]
    assert val[-1] < val[0] and all(b is not None for b in records[-1]["val_loss_bins"])
