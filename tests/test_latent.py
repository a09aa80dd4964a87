"""Latent mode: a tiny random AutoencoderKL (32 px -> 4x16x16 latents); cache, resume, sampling, VAE refusals, SD export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from helpers import WITHOUT_T2ILAB, make_tiny_checkpoint
from safetensors.torch import load_file
from t2ilab.config import ConfigError, load_config
from t2ilab.datasets.data import load_dataset, to_model_range
from t2ilab.sampling.export import ExportError, export_checkpoint
from t2ilab.sampling.pipeline import load_pipeline
from t2ilab.training import latent_space
from t2ilab.training.checkpoint import CheckpointError, read_manifest
from t2ilab.training.representation import image_space
from t2ilab.training.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]
# SD decodes with (x / 2 + 0.5).clamp(0, 1), t2ilab with (x.clamp(-1, 1) + 1) / 2: equal up to float32 rounding.
TOLERANCE = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_vae(folder: Path, seed: int, **config) -> Path:
    """A random 2-level AutoencoderKL (downsampling 2, 4 latent channels) saved with save_pretrained."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, sample_size=32, **config)
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaes")
    return {"main": tiny_vae(root / "vae", 0, scaling_factor=0.5),
            "other": tiny_vae(root / "other", 1, scaling_factor=0.7, shift_factor=0.1)}


@pytest.fixture(scope="module")
def latent_config(tmp_path_factory, vaes):
    cache = tmp_path_factory.mktemp("cache")
    root = tmp_path_factory.mktemp("latent_runs")

    def make(*overrides: str, output: str = "run", vae: str = "main"):
        base = [f"output_dir={root / output}", f"data.cache_dir={cache}", f"model.vae={vaes[vae]}", "data.resolution=32"]
        return load_config(REPO_ROOT / "configs/tiny.yaml", base + list(overrides))

    return make


@pytest.fixture(scope="module")
def straight(latent_config):
    return train(latent_config(output="straight"), progress="none")


def weights(ckpt: Path, part: str) -> dict[str, torch.Tensor]:
    (file,) = (ckpt / part).glob("*.safetensors")
    return load_file(file)


def test_the_unet_trains_on_the_vaes_latents(straight, latent_config, vaes):
    unet_config = json.loads((straight.last_checkpoint / "unet" / "config.json").read_text())
    assert (unet_config["in_channels"], unet_config["out_channels"], unet_config["sample_size"]) == (4, 4, 16)
    recorded = read_manifest(straight.last_checkpoint)["vae"]
    assert recorded["path"] == str(vaes["main"]) and len(recorded["sha256"]) == 64 and recorded["scaling_factor"] == 0.5
    assert not (straight.last_checkpoint / "vae").exists()  # the frozen VAE stays where model.vae points
    assert "latent space 4x16x16" in (straight.output_dir / "train.log").read_text()
    # The cache holds (mode of the posterior - shift) * scale of every image: checked against the VAE itself.
    cfg = latent_config(vae="other")
    ds, space = load_dataset(cfg.data), image_space(cfg)
    cached = space.cache(ds, cfg.data.cache_dir)
    vae = AutoencoderKL.from_pretrained(vaes["other"])
    with torch.no_grad():
        want = (vae.encode(to_model_range(ds.images[:8])).latent_dist.mean - 0.1) * 0.7
    torch.testing.assert_close(cached[:8], want, atol=1e-5, rtol=0)


def test_the_latent_cache_is_reused_and_keyed_by_the_vae(straight, latent_config, monkeypatch):
    cfg = latent_config()
    ds = load_dataset(cfg.data)

    def no_encoding(self, images):
        raise AssertionError("encoded again although the cache holds these latents")

    with monkeypatch.context() as m:
        m.setattr(latent_space.LatentSpace, "encode", no_encoding)
        space = image_space(cfg)
        reused = space.cache(ds, cfg.data.cache_dir)
        assert space.from_cache is True
    other = image_space(latent_config(vae="other"))
    fresh = other.cache(ds, cfg.data.cache_dir)
    assert other.identity["sha256"] != space.identity["sha256"]
    assert not torch.equal(reused, fresh)
    assert len(list(Path(cfg.data.cache_dir).glob("latents-*"))) == 2


def test_resume_is_bit_identical_in_latent_mode(straight, latent_config):
    first = train(latent_config(output="resumed"), progress="none", max_steps=5)  # mid-epoch 2
    assert first.global_step == 5
    resumed = train(latent_config(output="resumed"), resume="latest", progress="none")
    assert (resumed.epoch, resumed.global_step) == (straight.epoch, straight.global_step) == (4, 12)
    for part in ("unet", "unet_ema", "text_encoder"):
        a, b = weights(straight.last_checkpoint, part), weights(resumed.last_checkpoint, part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_sampling_decodes_rgb_images_at_the_data_resolution(straight):
    pipe = load_pipeline(straight.last_checkpoint, device="cpu")
    images = pipe(["a red circle", "two yellow squares"], num_inference_steps=3, seed=5, output_type="pt").images
    assert images.shape == (2, 3, 32, 32) and pipe.resolution == 32
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0
    again = pipe(["a red circle", "two yellow squares"], num_inference_steps=3, seed=5, output_type="np").images
    assert again.shape == (2, 32, 32, 3)
    assert np.array_equal(again[0], (images[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    # Alone, the same prompt and seed give the same image up to CPU kernels: a batch of 1 may take other oneDNN
    # paths than a batch of 2 (seen without AVX-512), so one 8-bit level of rounding is allowed, not more.
    alone = pipe(["a red circle"], num_inference_steps=3, seed=5, output_type="np").images
    assert np.abs(alone[0].astype(int) - again[0].astype(int)).max() <= 1


def test_another_vae_is_refused_for_resume_and_sampling(straight, latent_config, vaes, tmp_path):
    with pytest.raises(CheckpointError, match=rf"cannot resume .*trained with model.vae='{vaes['main']}'.*but "
                                              rf"model.vae='{vaes['other']}' .*is given.*start a new run"):
        train(latent_config("training.num_epochs=6", output="straight", vae="other"), resume="latest", progress="none")
    pixel = load_config(REPO_ROOT / "configs/tiny.yaml", [f"output_dir={straight.output_dir}", "training.num_epochs=6"])
    with pytest.raises(CheckpointError, match=r"trained with model.vae=.*but pixel space \(no model.vae\) is given"):
        train(pixel, resume="latest", progress="none")
    # The files at the recorded path changed (another VAE copied over them): sampling refuses, naming both hashes.
    moved = tmp_path / "checkpoint-epoch-0004"
    shutil.copytree(straight.last_checkpoint, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    trained_hash = manifest["vae"]["sha256"]
    manifest["vae"]["path"] = str(shutil.copytree(vaes["other"], tmp_path / "vae"))
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=rf"cannot sample .*sha256 {trained_hash[:12]}\).*but model.vae=.*sha256 (?!{trained_hash[:12]})"):
        load_pipeline(moved, device="cpu")


def test_a_missing_vae_is_a_config_error_naming_the_field(latent_config, tmp_path):
    with pytest.raises(ConfigError, match=r"model.vae='.*nowhere' could not be loaded .*config.json.*never downloads"):
        image_space(latent_config(f"model.vae={tmp_path / 'nowhere'}"))


def test_latent_mode_allows_512_px_and_pixel_mode_stops_at_128():
    tiny = REPO_ROOT / "configs/tiny.yaml"
    for side in (256, 512):
        assert load_config(tiny, ["model.vae=some/vae", f"data.resolution={side}"]).data.resolution == side
    with pytest.raises(ConfigError, match=r"data.resolution=256 is above 128, the pixel-space limit.*set model.vae"):
        load_config(tiny, ["data.resolution=256"])
    with pytest.raises(ConfigError, match=r"data.resolution = 520 is not allowed"):
        load_config(tiny, ["model.vae=some/vae", "data.resolution=520"])


# Sampled where `import t2ilab` fails (as in test_export.py); one CPU generator per image, as t2ilab seeds them.
LOAD_WITHOUT_T2ILAB = WITHOUT_T2ILAB + r"""
for folder, kwargs, seeds, out in json.loads(sys.argv[1]):
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    generator = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    np.save(out, pipe(**kwargs, generator=generator, output_type="np").images)
    print("loaded", type(pipe).__name__, pipe.safety_checker)
"""


def test_export_is_a_stable_diffusion_pipeline_with_t2ilabs_images(straight, latent_config, vaes, tmp_path):
    pooled = make_tiny_checkpoint(tmp_path / "pooled", overrides=[f"model.vae={vaes['main']}", "data.resolution=32",
                                                                  "model.pooled_text_embedding=true"])
    cases = {
        "trained": (straight.last_checkpoint, {"prompt": ["a red circle", "two yellow squares"], "negative_prompt": ["a blue square"] * 2,
                                               "num_inference_steps": 4, "guidance_scale": 3.0, "guidance_rescale": 0.7}, [3, 4]),
        "pooled": (pooled, {"prompt": "three green triangles", "num_inference_steps": 5, "guidance_scale": 2.0}, [11]),
    }
    jobs = []
    for name, (ckpt, kwargs, seeds) in cases.items():
        folder = export_checkpoint(ckpt, tmp_path / f"export-{name}")
        jobs.append([str(folder), kwargs, seeds, str(tmp_path / f"{name}.npy")])
    index = json.loads((tmp_path / "export-trained" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    assert json.loads((tmp_path / "export-trained" / "text_encoder" / "config.json").read_text())["use_attention_mask"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_T2ILAB, json.dumps(jobs)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("loaded StableDiffusionPipeline None") == 2
    for name, (ckpt, kwargs, seeds) in cases.items():
        kwargs = dict(kwargs)
        pipe = load_pipeline(ckpt, scheduler="dpmsolver++", device="cpu")
        want = pipe(kwargs.pop("prompt"), seed=seeds, output_type="pt", **kwargs).images.permute(0, 2, 3, 1).numpy()
        got = np.load(tmp_path / f"{name}.npy")
        assert got.shape == want.shape == (len(seeds), 32, 32, 3), name
        print(name, "max |SD - t2ilab| =", np.abs(got - want).max())
        assert np.abs(got - want).max() <= TOLERANCE, name


def test_export_refuses_a_vae_with_a_shift_factor(latent_config, vaes, tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "run", overrides=[f"model.vae={vaes['other']}", "data.resolution=32"])
    with pytest.raises(ExportError, match=r"shift_factor=0.1, which StableDiffusionPipeline ignores"):
        export_checkpoint(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides", [["noise.objective=flow_matching"], ["model.coord_channels=true"]], ids=["flow", "coords"])
def test_export_refuses_what_stable_diffusion_cannot_sample(vaes, tmp_path, overrides):
    ckpt = make_tiny_checkpoint(tmp_path / "run", overrides=[f"model.vae={vaes['main']}", "data.resolution=32", *overrides])
    with pytest.raises(ExportError, match=r"trained in latent space with .*StableDiffusionPipeline cannot sample; sample it with t2ilab"):
        export_checkpoint(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()
