"""Two CPU processes (gloo, via `accelerate launch`) train the same model as one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file
from t2ilab.training.checkpoint import list_checkpoints
from t2ilab.training.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]
# Gradients are averaged by all-reduce in another order than one process sums them: float rounding only.
TOLERANCE = 1e-4


def launch_two(cfg, *extra: str) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
           "-m", "t2ilab", "train", "--config", str(REPO_ROOT / "configs/tiny.yaml"),
           "--set", f"output_dir={cfg.output_dir}", "--set", f"data.cache_dir={cfg.data.cache_dir}", "--progress", "plain", *extra]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def max_difference(a: Path, b: Path, part: str) -> float:
    (fa,), (fb,) = (a / part).glob("*.safetensors"), (b / part).glob("*.safetensors")
    wa, wb = load_file(fa), load_file(fb)
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def test_two_processes_match_one_and_resume_across_process_counts(tiny_config):
    one = train(tiny_config(output="one"), progress="none")

    two_cfg = tiny_config(output="two")
    launch_two(two_cfg)
    out = Path(two_cfg.output_dir)
    assert [p.name for p, _ in list_checkpoints(out)] == ["checkpoint-epoch-0002", "checkpoint-epoch-0004"]
    log = (out / "train.log").read_text()
    assert "on 2 process(es)" in log
    assert log.count("epoch 1 step 1 loss:") == 1  # only the main process writes
    for part in ("unet", "unet_ema", "text_encoder"):
        assert max_difference(one.last_checkpoint, out / "checkpoint-epoch-0004", part) < TOLERANCE

    # 1 process to epoch 2, then 2 processes to the end: the plan says what changed, the weights still agree.
    mixed_cfg = tiny_config(output="mixed")
    train(mixed_cfg, progress="none", stop_at_epoch=2)
    launch_two(mixed_cfg, "--resume", "latest")
    mixed = Path(mixed_cfg.output_dir)
    assert "processes: 1 -> 2" in (mixed / "train.log").read_text()
    assert max_difference(one.last_checkpoint, mixed / "checkpoint-epoch-0004", "unet") < TOLERANCE
