"""Bad input, table-driven: each case is one line (what to set up, which command, exit code, message).

Every case runs the real command-line entry point against a folder that already holds a good run, and then
checks that nothing already on disk changed.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2ilab import cli
from t2ilab.train import train

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
    return str(ckpt)


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
    assert {"yaml", "unknown", "folder", "checkpoint", "prompt", "sample", "report"} <= kinds
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"
