"""Nothing lost: six ways a run's data used to be overwritten or dropped, each refused or repaired (checksums before/after)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_checkpoint
from t2ilab.config import ConfigError
from t2ilab.sampling.sample import main as sample_main
from t2ilab.train_cli import main as train_main
from t2ilab.training import runlog
from t2ilab.training.checkpoint import CheckpointError, list_checkpoints, resolve_checkpoint
from t2ilab.training.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root (the run lock excluded: it is released, not data)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != runlog.LOCK_NAME}


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_again_into_a_finished_run_is_refused(tiny_config, capsys):
    cfg = tiny_config("training.num_epochs=2")
    out = Path(cfg.output_dir)
    train(cfg, progress="none")
    before = snapshot(out)
    with pytest.raises(ConfigError, match=r"already holds a run .*--resume latest.*another output_dir.*--overwrite"):
        train(cfg, progress="none")
    code = train_main(["--config", str(REPO_ROOT / "configs/tiny.yaml"), "--set", f"output_dir={out}",
                       "--set", f"data.cache_dir={cfg.data.cache_dir}", "--set", "training.num_epochs=2", "--progress", "none"])
    assert code == 2 and "already holds a run" in capsys.readouterr().err
    assert snapshot(out) == before
    # An explicit --overwrite discards the old run: one run's records, not two.
    train(cfg, progress="none", overwrite=True)
    assert [r["epoch"] for r in records(out) if r["type"] == "val"] == [1, 2]


def test_resuming_an_older_checkpoint_keeps_the_later_ones_unless_asked(tiny_config):
    base = ("reports.milestones=[]", "training.checkpoint_every_n_epochs=1", "training.checkpoints_total_limit=2")
    cfg = tiny_config(*base)
    out = Path(cfg.output_dir)
    train(cfg, progress="none")
    assert [p.name for p, _ in list_checkpoints(out)] == ["checkpoint-epoch-0003", "checkpoint-epoch-0004"]
    before = snapshot(out)
    older = str(out / "checkpoint-epoch-0003")
    with pytest.raises(CheckpointError, match=r"resuming checkpoint-epoch-0003 would overwrite .*checkpoint-epoch-0004.*--overwrite"):
        train(cfg, resume=older, progress="none")
    assert snapshot(out) == before
    # Asked for: the later checkpoint is discarded, the resumed one kept, and `latest` is the new epoch 4.
    result = train(cfg, resume=older, progress="none", overwrite=True)
    assert [p.name for p, _ in list_checkpoints(out)] == ["checkpoint-epoch-0003", "checkpoint-epoch-0004"]
    assert resolve_checkpoint("latest", out) == result.last_checkpoint
    assert snapshot(out)["checkpoint-epoch-0003/unet/diffusion_pytorch_model.safetensors"] == \
        before["checkpoint-epoch-0003/unet/diffusion_pytorch_model.safetensors"]
    # Training is deterministic: the redone epoch 4 equals the discarded one bit for bit.
    key = "checkpoint-epoch-0004/unet/diffusion_pytorch_model.safetensors"
    assert snapshot(out)[key] == before[key]


def test_latest_names_a_damaged_newest_checkpoint_instead_of_skipping_it(tiny_config):
    cfg = tiny_config()
    out = Path(cfg.output_dir)
    train(cfg, progress="none")
    (out / "checkpoint-epoch-0004" / "manifest.json").write_text('{"complete": tr')
    before = snapshot(out)
    more = tiny_config("training.num_epochs=6")
    with pytest.raises(CheckpointError, match=r"newest checkpoint .* is damaged.*checkpoint-epoch-0004.*manifest\.json is unreadable"
                                              r".*--resume .*checkpoint-epoch-0002 --overwrite"):
        train(more, resume="latest", progress="none")
    with pytest.raises(CheckpointError, match=r"would overwrite the later checkpoint\(s\) checkpoint-epoch-0004"):
        train(more, resume=str(out / "checkpoint-epoch-0002"), progress="none")
    assert snapshot(out) == before


def test_resuming_onto_a_resized_data_set_rebuilds_the_schedule(tiny_config):
    base = ("training.lr_scheduler=cosine",)
    cfg = tiny_config(*base)
    out = Path(cfg.output_dir)
    train(cfg, progress="none", stop_at_epoch=2)
    before = snapshot(out / "checkpoint-epoch-0002")
    lr_at_checkpoint = [r["lr"] for r in records(out) if r["type"] == "train"][-1]
    bigger = tiny_config(*base, "data.num_samples=128")  # 56 -> 112 training images: 3 -> 7 steps per epoch
    train(bigger, resume="latest", progress="none")
    log = (out / "train.log").read_text()
    assert "steps per epoch 3 -> 7" in log and "schedule restored exactly" not in log
    lrs = [r["lr"] for r in records(out) if r["type"] == "train" and r["step"] > 6]
    assert len(lrs) == 14 and lrs[0] <= lr_at_checkpoint
    assert all(a >= b for a, b in zip(lrs, lrs[1:])), "the cosine schedule climbed back up"
    assert snapshot(out / "checkpoint-epoch-0002") == before


def test_a_partial_last_metrics_line_is_cut_off_not_glued_to(tiny_config):
    cfg = tiny_config()
    out = Path(cfg.output_dir)
    train(cfg, progress="none", stop_at_epoch=2)
    whole = (out / "metrics.jsonl").read_bytes()
    with open(out / "metrics.jsonl", "ab") as fh:
        fh.write(b'{"type": "train", "epoch": 3, "st')  # the disk filled mid-write
    train(cfg, resume="latest", progress="none")
    data = (out / "metrics.jsonl").read_bytes()
    assert data.startswith(whole)
    recs = records(out)  # every line parses
    assert [r["epoch"] for r in recs if r["type"] == "val"] == [1, 2, 3, 4]
    assert '{"type": "train", "epoch": 3, "st' in (out / "train.log").read_text()


def test_a_failed_append_leaves_no_partial_line(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    runlog.append_line(path, '{"a": 1}')
    before = path.read_bytes()
    real_write = os.write
    monkeypatch.setattr(runlog.os, "write", lambda fd, data: real_write(fd, data[:3]))  # a full disk: a short write
    with pytest.raises(OSError):
        runlog.append_line(path, '{"b": 2}')
    assert path.read_bytes() == before


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    return make_tiny_checkpoint(tmp_path_factory.mktemp("run"))


def test_sampling_into_an_existing_folder_is_refused(ckpt, tmp_path, capsys, monkeypatch):
    args = ["--checkpoint", str(ckpt), "--num_inference_steps", "2", "--device", "cpu", "--prompt", "a red circle"]
    out = tmp_path / "samples"
    assert sample_main(args + ["--output", str(out)]) == 0
    before = snapshot(out)
    assert sample_main(args + ["--output", str(out), "--seed", "3"]) == 2
    assert f"--output {out} already holds 1 of the files" in capsys.readouterr().err  # grid.png would be replaced
    assert snapshot(out) == before
    assert sample_main(args + ["--output", str(out), "--overwrite"]) == 0
    # The default folder is never overwritten: a second run goes next to the first.
    monkeypatch.chdir(tmp_path)
    assert sample_main(args) == 0 and sample_main(args) == 0
    first = tmp_path / "samples" / ckpt.parent.name / ckpt.name
    assert (first / "grid.png").is_file() and (first.with_name(ckpt.name + "-2") / "grid.png").is_file()
