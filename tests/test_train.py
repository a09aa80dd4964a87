"""Training engine: exact resume, LR changes on resume, crash safety, guards (configs/tiny.yaml, CPU)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from t2ilab.training.checkpoint import CheckpointError, list_checkpoints, read_manifest, resolve_checkpoint
from t2ilab.training.runlog import RunLockedError, acquire_lock
from t2ilab.training.train import TrainingDiverged, train

REPO_ROOT = Path(__file__).resolve().parents[1]


def weights(ckpt: Path, part: str) -> dict[str, torch.Tensor]:
    (file,) = (ckpt / part).glob("*.safetensors")
    return load_file(file)


def assert_same_weights(a: Path, b: Path, part: str) -> None:
    wa, wb = weights(a, part), weights(b, part)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{part}.{k} differs"


def loss_lines(output_dir: Path) -> list[str]:
    """train.log loss lines without timestamps and wall-clock throughput."""
    out = []
    for line in (output_dir / "train.log").read_text().splitlines():
        if "loss:" in line:
            text = line.split(" ", 2)[2]
            out.append(re.sub(r"samples/s: \d+|epoch_seconds: [\d.]+", "", text))
    return out


@pytest.mark.parametrize("stop", [{"stop_at_epoch": 2}, {"max_steps": 5}], ids=["epoch-boundary", "mid-epoch"])
def test_resume_is_bit_identical(tiny_config, stop):
    straight = train(tiny_config(output="straight"), progress="none")
    first = train(tiny_config(output="resumed"), progress="none", **stop)
    assert first.epoch < 4
    resumed = train(tiny_config(output="resumed"), resume="latest", progress="none")
    assert (straight.epoch, straight.global_step) == (resumed.epoch, resumed.global_step) == (4, 12)
    for part in ("unet", "unet_ema", "text_encoder"):
        assert_same_weights(straight.last_checkpoint, resumed.last_checkpoint, part)
    assert loss_lines(straight.output_dir) == loss_lines(resumed.output_dir)


def test_ema_differs_from_raw_and_is_restored(tiny_config):
    result = train(tiny_config(), progress="none", stop_at_epoch=2)
    raw, ema = weights(result.last_checkpoint, "unet"), weights(result.last_checkpoint, "unet_ema")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    state = json.loads((result.last_checkpoint / "training_state" / "state.json").read_text())
    assert state["ema_optimization_step"] == result.global_step


def test_new_learning_rate_takes_effect_on_resume(tiny_config):
    train(tiny_config(), progress="none", stop_at_epoch=2)
    cfg = tiny_config("training.learning_rate=5e-4")
    result = train(cfg, resume="latest", progress="none")
    log = (result.output_dir / "train.log").read_text()
    assert "learning_rate 1.0e-03 -> 5.0e-04" in log
    after = [line for line in log.splitlines() if re.search(r"epoch [34] step \d+ loss:", line)]
    assert after and all("lr: 5.0e-04" in line for line in after)
    opt = torch.load(result.last_checkpoint / "training_state" / "optimizer.pt", weights_only=True)
    assert opt["param_groups"][0]["lr"] == pytest.approx(5e-4)


def test_more_epochs_continue_the_cosine_schedule_without_a_jump(tiny_config):
    base = ("training.lr_scheduler=cosine", "training.log_every_n_steps=1")
    train(tiny_config(*base), progress="none")  # 4 epochs x 3 steps, cosine to ~0
    records = [json.loads(x) for x in (Path(tiny_config(*base).output_dir) / "metrics.jsonl").read_text().splitlines()]
    lr_at_end = [r["lr"] for r in records if r["type"] == "train"][-1]
    extended = tiny_config(*base, "training.num_epochs=8")
    train(extended, resume="latest", progress="none")
    records = [json.loads(x) for x in (Path(extended.output_dir) / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["type"] == "train" and r["step"] > 12]
    # Documented policy: the new segment starts from the LR in effect at the checkpoint (no jump) and decays.
    assert lrs[0] <= lr_at_end + 1e-12
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] < 1e-5


def test_num_epochs_below_the_checkpoint_is_refused(tiny_config):
    train(tiny_config(), progress="none", stop_at_epoch=2)
    with pytest.raises(CheckpointError, match="training.num_epochs=1"):
        train(tiny_config("training.num_epochs=1"), resume="latest", progress="none")


def test_another_model_shape_is_refused_with_a_reason(tiny_config):
    train(tiny_config(), progress="none", stop_at_epoch=2)
    with pytest.raises(CheckpointError, match="different model"):
        train(tiny_config("model.block_out_channels=[16, 16]"), resume="latest", progress="none")


def test_nan_loss_stops_with_the_step_and_keeps_last_checkpoint(tiny_config, monkeypatch):
    """A loss that turns NaN at step 8 (poisoned from the test side) stops the run with the step and the last good checkpoint."""
    from t2ilab.training.train import Trainer

    real_forward = Trainer.forward_loss

    def poisoned_at_step_8(self, unet, *batch):
        mse, weights = real_forward(self, unet, *batch)
        if unet.training and self.global_step + 1 == 8:
            mse = mse * float("nan")
        return mse, weights

    monkeypatch.setattr(Trainer, "forward_loss", poisoned_at_step_8)
    with pytest.raises(TrainingDiverged, match=r"by step 8 .*checkpoint-epoch-0002"):
        train(tiny_config(), progress="none")
    (path, manifest), = list_checkpoints(tiny_config().output_dir)
    assert manifest["epoch"] == 2


def test_second_run_on_a_locked_dir_is_refused(tiny_config):
    cfg = tiny_config()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".t2ilab.lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid}"):
            train(cfg, progress="none")
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its stale lock is taken over.
    assert acquire_lock(out).exists()


def test_sigkill_during_checkpoint_write_leaves_latest_loadable(tiny_config):
    cfg = tiny_config()
    out = Path(cfg.output_dir)
    # The test widens the window between the weights and the manifest: save_training_state sleeps 2 s after writing.
    slow_checkpoints = (
        "import sys, time; import t2ilab.training.checkpoint as c; real = c.save_training_state\n"
        "def slow(*a, **k):\n    real(*a, **k); time.sleep(2)\n"
        "c.save_training_state = slow\n"
        "from t2ilab.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", slow_checkpoints, "train", "--config", str(REPO_ROOT / "configs/tiny.yaml"),
           "--set", f"output_dir={out}", "--set", f"data.cache_dir={cfg.data.cache_dir}", "--progress", "none"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / ".tmp-checkpoint-epoch-0004").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the second checkpoint never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = resolve_checkpoint("latest", out)
    assert latest.name == "checkpoint-epoch-0002"
    assert read_manifest(latest)["complete"] is True
    result = train(cfg, resume="latest", progress="none")
    assert result.epoch == 4 and result.last_checkpoint.name == "checkpoint-epoch-0004"
    assert not list(out.glob(".tmp-*"))


def test_training_uses_one_thread_while_a_background_report_runs(tiny_config):
    """A report process beside training: one torch thread until it exits (2-core machines), then all again."""
    import subprocess

    children = []

    def fake_report(path, epoch):  # stands in for start_background_reports: a process that is still busy
        children.append(subprocess.Popen(["sleep", "30"]))
        return children[-1]

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = train(tiny_config("reports.milestones=[2]"), progress="none", on_milestone=fake_report)
        assert torch.get_num_threads() == 2, "the caller's thread count is restored"
    finally:
        for child in children:
            child.kill()
        torch.set_num_threads(before)
    log = (result.output_dir / "train.log").read_text()
    assert len(children) == 1 and "torch threads: 1 (a report is running beside training)" in log
