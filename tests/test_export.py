"""`t2ilab export`: the folder loads with plain diffusers where t2ilab cannot be imported, and samples t2ilab's images."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import WITHOUT_T2ILAB, make_tiny_checkpoint
from safetensors.torch import load_file
from t2ilab.sampling import export
from t2ilab.sampling.export import export_checkpoint
from t2ilab.sampling.pipeline import load_pipeline

# Sampled in a process where `import t2ilab` fails: the documented route, nothing else. One process for every job
# (job: export folder, call kwargs, .npy to write); a torch.Generator is built from a "generator_seed" key.
LOAD_WITHOUT_T2ILAB = WITHOUT_T2ILAB + r"""
for folder, kwargs, out in json.loads(sys.argv[1]):
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    if "generator_seed" in kwargs:
        kwargs["generator"] = torch.Generator("cpu").manual_seed(kwargs.pop("generator_seed"))
    np.save(out, pipe(**kwargs, output_type="np").images)
try:
    import t2ilab
    print("t2ilab importable")
except ImportError:
    print("t2ilab blocked:", type(pipe).__module__, type(pipe).__name__)
"""

# t2ilab's own pipeline and the export run the same float ops on the same CPU with one thread: equal to the bit.
TOLERANCE = 0.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt = make_tiny_checkpoint(root / "run")
    # Attention-pooled caption in the timestep embedding, and a stochastic sampler that draws noise every step.
    pooled = make_tiny_checkpoint(root / "pooled", overrides=["model.pooled_text_embedding=true",
                                                               "sampling.scheduler=euler_ancestral"])
    # Rectified flow sampled with flow_euler, and a UNet that reads CoordConv channels.
    flow = make_tiny_checkpoint(root / "flow", overrides=["noise.objective=flow_matching", "model.coord_channels=true"])
    return {
        "root": root, "ckpt": ckpt, "pooled": pooled, "flow": flow, "flow_ema": export_checkpoint(flow, root / "out-flow"),
        "ema": export_checkpoint(ckpt, root / "out-ema"),
        "raw": export_checkpoint(ckpt, root / "out-raw", weights="raw"),
        "pooled_ema": export_checkpoint(pooled, root / "out-pooled"),
    }


def t2ilab_images(ckpt, weights: str = "ema", scheduler: str = "dpmsolver++", **kwargs) -> np.ndarray:
    """t2ilab's own images as float (N, H, W, 3) in [0, 1]."""
    pipe = load_pipeline(ckpt, weights=weights, scheduler=scheduler, device="cpu")
    return pipe(output_type="pt", **kwargs).images.permute(0, 2, 3, 1).numpy()


def test_exported_folder_samples_t2ilabs_images_without_t2ilab(run, tmp_path):
    jobs = {
        # Steps and guidance come from the export's defaults (configs/tiny.yaml: 4 steps, guidance 3).
        "defaults": (run["ema"], {"prompt": "a red circle", "generator_seed": 7}),
        "batch": (run["ema"], {"prompt": ["two yellow squares", "a red\tcircle\x07"], "seed": [3, 4],
                               "negative_prompt": "a blue square", "guidance_rescale": 0.7, "num_inference_steps": 5}),
        "raw": (run["raw"], {"prompt": "a red circle", "seed": 7}),
        "pooled": (run["pooled_ema"], {"prompt": "three green triangles", "seed": 11, "guidance_scale": 2.0}),
        "flow": (run["flow_ema"], {"prompt": ["a red circle", "two blue squares"], "seed": [5, 6]}),
    }
    argv = [[str(folder), kwargs, str(tmp_path / f"{name}.npy")] for name, (folder, kwargs) in jobs.items()]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_T2ILAB, json.dumps(argv)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "t2ilab blocked: diffusers_modules.local.pipeline_t2ilab T2ILabPipeline" in done.stdout

    expected = {
        "defaults": t2ilab_images(run["ckpt"], prompt="a red circle", seed=7, num_inference_steps=4, guidance_scale=3.0),
        "batch": t2ilab_images(run["ckpt"], prompt=["two yellow squares", "a red\tcircle\x07"], seed=[3, 4],
                               negative_prompt="a blue square", guidance_rescale=0.7, num_inference_steps=5),
        "raw": t2ilab_images(run["ckpt"], "raw", prompt="a red circle", seed=7, num_inference_steps=4),
        "pooled": t2ilab_images(run["pooled"], scheduler="euler_ancestral", prompt="three green triangles", seed=11,
                                guidance_scale=2.0, num_inference_steps=4),
        "flow": t2ilab_images(run["flow"], scheduler="flow_euler", prompt=["a red circle", "two blue squares"], seed=[5, 6],
                              num_inference_steps=4, guidance_scale=3.0),
    }
    for name, want in expected.items():
        got = np.load(tmp_path / f"{name}.npy")
        assert got.shape == want.shape and got.dtype == np.float32, name
        assert np.abs(got - want).max() <= TOLERANCE, name
    assert np.abs(np.load(tmp_path / "raw.npy") - expected["defaults"]).max() > 1e-3, "raw and EMA images differ"


def test_weights_pick_the_checkpoints_unet(run):
    weights = "diffusion_pytorch_model.safetensors"
    ema, raw = (load_file(run[w] / "unet" / weights) for w in ("ema", "raw"))
    assert ema.keys() == raw.keys()
    for name, tensor in load_file(run["ckpt"] / "unet_ema" / weights).items():
        assert torch.equal(ema[name], tensor)
    for name, tensor in load_file(run["ckpt"] / "unet" / weights).items():
        assert torch.equal(raw[name], tensor)
    assert not all(torch.equal(ema[k], raw[k]) for k in ema)
    meta = json.loads((run["raw"] / "t2ilab.json").read_text())
    assert (meta["weights"], meta["checkpoint_path"]) == ("raw", str(run["ckpt"]))


def test_export_layout_names_the_shipped_pipeline(run):
    index = json.loads((run["ema"] / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_t2ilab", "T2ILabPipeline"]
    assert (index["num_inference_steps"], index["guidance_scale"]) == (4, 3.0)  # configs/tiny.yaml sampling
    assert json.loads((run["ema"] / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == \
        "DPMSolverMultistepScheduler"
    source = (run["ema"] / "pipeline_t2ilab.py").read_text()
    assert "t2ilab." not in source.replace("t2ilab.sampling.pipeline.T2IPipeline", "")  # only a comment names t2ilab code


def test_cli_exports_into_an_empty_folder(run, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert export.main([str(run["ckpt"].parent), str(out), "--weights", "raw"]) == 0  # an output dir: its newest
    assert (out / "model_index.json").is_file() and not list(tmp_path.glob(".tmp-export-*"))
    assert "trust_remote_code=True" in capsys.readouterr().out


def refused(argv, capsys) -> str:
    assert export.main([str(a) for a in argv]) == 2
    return capsys.readouterr().err


def test_refuses_a_non_empty_output_and_keeps_it(run, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "already exists and is not empty" in refused([run["ckpt"], out], capsys)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    assert "is a file or a link" in refused([run["ckpt"], tmp_path / "file"], capsys)


def test_refuses_what_is_not_a_t2ilab_checkpoint(run, tmp_path, capsys):
    assert "is not a t2ilab checkpoint" in refused([run["ema"], tmp_path / "a"], capsys)  # an export, say
    assert "checkpoint not found" in refused([tmp_path / "checkpoint-epoch-0009", tmp_path / "b"], capsys)
    partial = tmp_path / "run" / "checkpoint-epoch-0001"
    partial.mkdir(parents=True)
    assert "is partial" in refused([partial, tmp_path / "c"], capsys)
    assert not any((tmp_path / n).exists() for n in "abc")


def test_refuses_ema_when_the_checkpoint_has_none(tmp_path, capsys):
    ckpt = make_tiny_checkpoint(tmp_path / "run", ema=False)
    err = refused([ckpt, tmp_path / "out"], capsys)
    assert "has no EMA weights" in err and "--weights raw" in err
    assert not (tmp_path / "out").exists()
    assert "invalid choice" in refused([ckpt, tmp_path / "out", "--weights", "best"], capsys)


def test_a_failed_export_leaves_nothing(run, tmp_path, monkeypatch, capsys):
    def fail(path, cfg, weights, folder):
        (folder / "unet").mkdir(parents=True)
        raise OSError("No space left on device")

    monkeypatch.setitem(export.LAYOUTS, "pixels", fail)
    assert export.main([str(run["ckpt"]), str(tmp_path / "out")]) == 1
    assert "No space left on device; nothing was left behind" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
