"""`t2ilab sample`: files written, the warnings shown, and bad input refused before anything is written."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import make_tiny_checkpoint
from PIL import Image
from t2ilab.sampling.pipeline import load_pipeline
from t2ilab.sampling.sample import main


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CPU: avoid OpenMP spinning
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("run"))


def run(ckpt, out, *extra) -> int:
    return main(["--checkpoint", str(ckpt), "--output", str(out), "--num_inference_steps", "3", "--device", "cpu", *extra])


def test_writes_images_sidecars_and_a_grid(ckpt, tmp_path, capsys):
    out = tmp_path / "samples"
    code = run(ckpt, out, "--prompt", "a red circle", "--prompt", "a cat sitting on a chair", "--num_images", "2",
               "--seed", "5", "--batch-size", "1", "--scheduler", "ddim", "--guidance_scale", "2.5")
    captured = capsys.readouterr()
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "000_a-red-circle_seed5.json", "000_a-red-circle_seed5.png",
        "001_a-red-circle_seed6.json", "001_a-red-circle_seed6.png",
        "002_a-cat-sitting-on-a-chair_seed5.json", "002_a-cat-sitting-on-a-chair_seed5.png",
        "003_a-cat-sitting-on-a-chair_seed6.json", "003_a-cat-sitting-on-a-chair_seed6.png",
        "grid.png",
    ]
    side = json.loads((out / "002_a-cat-sitting-on-a-chair_seed5.json").read_text())
    assert side["checkpoint"] == str(ckpt) and (side["epoch"], side["global_step"]) == (2, 20)
    assert side["prompt"] == "a cat sitting on a chair" and side["seed"] == 5 and side["weights"] == "ema"
    assert (side["scheduler"], side["num_inference_steps"], side["guidance_scale"]) == ("ddim", 3, 2.5)
    assert side["unknown_words"] == ["cat", "sitting", "chair"] and side["seconds"] > 0 and side["t2ilab_version"]
    assert "negative_prompt" in side and "guidance_rescale" in side
    # The sidecar's parameters reproduce the image exactly.
    pipe = load_pipeline(ckpt, scheduler="ddim", device="cpu")
    again = pipe("a cat sitting on a chair", seed=5, num_inference_steps=3, guidance_scale=2.5, output_type="np").images[0]
    assert np.array_equal(np.asarray(Image.open(out / "002_a-cat-sitting-on-a-chair_seed5.png")), again)
    grid = Image.open(out / "grid.png")
    assert grid.width >= 2 * 128 and grid.height >= 2 * 128  # 2 prompts x 2 seeds, upscaled
    assert "the model never saw these words in training captions: cat, sitting, chair" in captured.err
    assert "a red circle'" not in captured.err  # known prompts get no warning
    assert str(out / "grid.png") in captured.out
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_prompts_file_latest_dashed_flags_and_batches(ckpt, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# shapes\na red circle\n\n  two yellow squares  \n")
    monkeypatch.chdir(tmp_path)
    code = main(["--checkpoint", "latest", "--output-dir", str(ckpt.parent), "--prompts-file", str(prompts),
                 "--num-inference-steps", "2", "--num-images", "3", "--batch-size", "4", "--guidance-scale", "1",
                 "--weights", "raw", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "samples" / ckpt.parent.name / ckpt.name  # the default output folder
    pngs = sorted(p.name for p in out.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 6 and pngs[3] == "003_two-yellow-squares_seed0.png"
    side = json.loads((out / "003_two-yellow-squares_seed0.json").read_text())
    assert side["weights"] == "raw" and side["guidance_scale"] == 1.0 and side["num_inference_steps"] == 2


def test_empty_prompt_is_sampled_but_flagged(ckpt, tmp_path, capsys):
    assert run(ckpt, tmp_path / "out", "--prompt", "") == 0
    assert "empty prompt" in capsys.readouterr().err
    assert (tmp_path / "out" / "000_unconditional_seed0.png").is_file()


def _partial(ckpt, tmp_path):
    partial = shutil.copytree(ckpt, tmp_path / "partial" / ckpt.name)
    (partial / "manifest.json").unlink()
    return partial


def _garbage(ckpt, tmp_path):
    broken = shutil.copytree(ckpt, tmp_path / "broken" / ckpt.name)
    (broken / "unet_ema" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 64)
    return broken


@pytest.mark.parametrize(
    "make_ckpt, args, message",
    [
        (lambda c, t: t / "missing", ["--prompt", "a red circle"], "checkpoint not found"),
        (_partial, ["--prompt", "a red circle"], "is partial (no manifest.json"),
        (_garbage, ["--prompt", "a red circle"], "could not load unet_ema/ (files: config.json, diffusion_pytorch_model.safetensors)"),
        (None, ["--prompt", "a red circle", "--num_inference_steps", "0"], "num_inference_steps must be ≥ 1, got 0"),
        (None, ["--prompt", "a red circle", "--scheduler", "plms"], "unknown scheduler 'plms'; valid names: ddpm, ddim, dpmsolver++"),
        (None, ["--prompt", "a red circle", "--guidance_scale", "0.5"], "guidance_scale < 1 has no meaning"),
        (None, ["--prompts-file", "nope.txt"], "prompts file not found: nope.txt"),
        (None, [], "no prompt given"),
        (None, ["--prompt", "x", "--num_images", "abc"], "argument --num_images/--num-images: invalid int value: 'abc'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(ckpt, tmp_path, capsys, make_ckpt, args, message):
    checkpoint = make_ckpt(ckpt, tmp_path) if make_ckpt else ckpt
    out = tmp_path / "out"
    code = main(["--checkpoint", str(checkpoint), "--output", str(out), "--device", "cpu", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("t2ilab sample: error:") and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_file_in_the_way_of_the_output_folder_is_refused(ckpt, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    assert run(ckpt, blocker / "samples", "--prompt", "a red circle") == 2
    assert "blocker is a file, not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "keep me"
    assert run(ckpt, blocker, "--prompt", "a red circle") == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_a_read_only_output_folder_is_refused(ckpt, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert run(ckpt, locked / "samples", "--prompt", "a red circle") == 2
        assert "is not writable" in capsys.readouterr().err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_settings_left_out_are_the_runs_own(ckpt, tmp_path):
    """One source of sampling defaults: the run's config (tiny.yaml: 4 steps), not a CLI constant."""
    from t2ilab.config import load_config
    from t2ilab.sampling.explore import generate

    run_cfg = load_config(ckpt / "config.yaml").sampling
    out = tmp_path / "samples"
    assert main(["--checkpoint", str(ckpt), "--output", str(out), "--device", "cpu", "--prompt", "a red circle"]) == 0
    side = json.loads((out / "000_a-red-circle_seed0.json").read_text())
    assert (side["scheduler"], side["num_inference_steps"], side["guidance_scale"]) == (
        run_cfg.scheduler, run_cfg.num_inference_steps, run_cfg.guidance_scale)
    assert run_cfg.num_inference_steps == 4  # tiny.yaml differs from the library default (25), so this can fail
    _, info = generate(ckpt, "a red circle")
    assert (info["scheduler"], info["steps"], info["guidance"]) == (run_cfg.scheduler, 4, run_cfg.guidance_scale)
