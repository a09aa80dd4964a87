"""Faults: a killed training step, a full disk while checkpointing, and a long run's bounded disk use."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from t2ilab.review.diagnose import read_metrics
from t2ilab.training import checkpoint as checkpoint_module
from t2ilab.training.checkpoint import CheckpointError, list_checkpoints, resolve_checkpoint
from t2ilab.training.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_sigkill_mid_step_loses_only_work_since_the_last_checkpoint(tiny_config):
    cfg = tiny_config("training.num_epochs=40", "training.checkpoint_every_n_epochs=1")
    out = Path(cfg.output_dir)
    cmd = [sys.executable, "-m", "t2ilab", "train", "--config", str(REPO_ROOT / "configs/tiny.yaml"), "--progress", "none",
           "--set", f"output_dir={out}", "--set", f"data.cache_dir={cfg.data.cache_dir}",
           "--set", "training.num_epochs=40", "--set", "training.checkpoint_every_n_epochs=1"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(list_checkpoints(out)) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = resolve_checkpoint("latest", out)
    epoch = int(latest.name.split("-")[2])
    result = train(cfg, resume="latest", progress="none", stop_at_epoch=epoch + 1)
    assert result.epoch == epoch + 1  # resumed from the last complete checkpoint, no earlier
    _, val = read_metrics(out)
    assert list(val["epoch"]) == list(range(1, epoch + 2))  # the killed epoch's partial log was superseded


def test_full_disk_during_checkpoint_is_a_clear_error_and_keeps_the_previous(tiny_config, monkeypatch):
    cfg = tiny_config()
    train(cfg, progress="none", stop_at_epoch=2)
    before = resolve_checkpoint("latest", cfg.output_dir)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_training_state", disk_full)
    monkeypatch.setattr("t2ilab.training.train.save_training_state", disk_full)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*No space left.*Earlier checkpoints are intact"):
        train(cfg, resume="latest", progress="none")
    assert resolve_checkpoint("latest", cfg.output_dir) == before
    assert not list(Path(cfg.output_dir).glob(".tmp-*"))


def test_free_space_is_checked_before_writing(tiny_config):
    cfg = tiny_config("training.min_free_disk_mb=100000000")
    with pytest.raises(CheckpointError, match=r"not enough disk space .*training\.min_free_disk_mb"):
        train(cfg, progress="none")
    assert list_checkpoints(cfg.output_dir) == []


def test_long_run_keeps_disk_bounded_and_every_milestone(tiny_config):
    cfg = tiny_config("training.num_epochs=12", "training.checkpoint_every_n_epochs=1",
                      "training.checkpoints_total_limit=2", "reports.milestones=[4, 8]")
    train(cfg, progress="none")
    kept = [(p.name, m["epoch"]) for p, m in list_checkpoints(cfg.output_dir)]
    assert [e for _, e in kept] == [4, 8, 11, 12]
    sizes = [sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p, _ in list_checkpoints(cfg.output_dir)]
    total = sum(f.stat().st_size for f in Path(cfg.output_dir).rglob("*") if f.is_file() and "checkpoint" in str(f))
    assert total <= 4 * max(sizes) * 1.01


@pytest.mark.slow
def test_ctrl_c_while_sampling_exits_cleanly_and_keeps_complete_images(tmp_path):
    import json
    import shutil

    from helpers import make_tiny_checkpoint
    from PIL import Image

    ckpt = make_tiny_checkpoint(tmp_path / "run")
    out = tmp_path / "samples"
    cmd = [sys.executable, "-m", "t2ilab", "sample", "--checkpoint", str(ckpt), "--prompt", "a red circle", "--num_images",
           "400", "--batch-size", "1", "--num_inference_steps", "20", "--device", "cpu", "--output", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while len(list(out.glob("*.json"))) < 2:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted:" in err and "Traceback" not in err
    pngs = sorted(out.glob("*.png"))
    assert pngs and not (out / "grid.png").exists() and not list(out.glob(".*"))
    for png in pngs:  # every image written is whole, with its sidecar
        Image.open(png).load()
        assert json.loads(png.with_suffix(".json").read_text())["image"] == png.name
    shutil.rmtree(tmp_path / "run")


@pytest.mark.slow
def test_output_dir_deleted_mid_run_is_a_clear_error(tiny_config):
    import shutil

    cfg = tiny_config("training.num_epochs=400")
    out = Path(cfg.output_dir)
    cmd = [sys.executable, "-m", "t2ilab", "train", "--config", str(REPO_ROOT / "configs/tiny.yaml"), "--progress", "none",
           "--set", f"output_dir={out}", "--set", f"data.cache_dir={cfg.data.cache_dir}", "--set", "training.num_epochs=400"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    shutil.rmtree(out, ignore_errors=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    assert "error:" in err and "Traceback" not in err
