"""The conda route and the pip route install the same packages at the same versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)\s*", line)
        assert m, f"not pinned exactly: {line!r}"
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pip_side = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    conda_pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(conda_pip) == pip_side


def test_torch_is_pinned_to_the_local_cpu_build():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in project["dependencies"]


def test_a_wheel_install_runs_reports_from_another_directory(tmp_path):
    """`pip install .` (not editable) carries the notebooks and configs: `t2ilab report` works from anywhere."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "source"  # a copy: an in-tree build would leave build/ in the checkout
    shutil.copytree(REPO_ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "outputs", "reports", "build", "*.egg-info", ".t2ilab_cache", "__pycache__", "bench", "tests"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("t2ilab-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert not (site / "t2ilab" / "_bundled" / "notebooks").is_symlink(), "a wheel holds copies, not links"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = os.environ | {"PYTHONPATH": str(site), "T2ILAB_HEADLESS": "1", "OMP_NUM_THREADS": "1"}

    def t2ilab(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "t2ilab", *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=600)

    where = subprocess.run([sys.executable, "-c", "import t2ilab.paths as p; print(p.__file__, p.checkout_root())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where == [str(site / "t2ilab" / "paths.py"), "None"], "the wheel's copy is imported, not the checkout"
    run = elsewhere / "run"
    train = t2ilab("train", "--config", "configs/tiny.yaml", "--set", f"output_dir={run}",
                   "--set", "training.num_epochs=2", "--set", "reports.milestones=[2]",
                   "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert train.returncode == 0, train.stderr[-2000:]
    report = t2ilab("report", "--run", str(run), "--notebooks", "loss_diagnosis", "--reports-dir", "reports")
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    assert (elsewhere / "reports" / "run" / "epoch-0002" / "loss_diagnosis.html").is_file()
    # The pipeline file an export ships is package data too.
    exported = t2ilab("export", str(run), "exported")
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (elsewhere / "exported" / "pipeline_t2ilab.py").read_bytes() == \
        (site / "t2ilab" / "sampling" / "export_pipeline" / "pipeline_t2ilab.py").read_bytes()
