"""Shared fixtures: tiny configs on CPU whose rendered data set is cached once per test session."""

from __future__ import annotations

import os
from pathlib import Path

# One OpenMP thread per process, set before torch loads: tiny models gain nothing from two, and on a 2-core CI box two
# spinning OpenMP threads beside another process (a kernel, a DDP peer) slowed steps 4-90x (bench/RESULTS.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from t2ilab.config import Config, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "configs" / "tiny.yaml"

os.environ.setdefault("T2ILAB_HEADLESS", "1")  # plain log lines, no progress bars, in test output


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data_cache")


@pytest.fixture
def tiny_config(tmp_path, data_cache):
    """A factory: tiny_config("training.num_epochs=6", output="run2") -> Config in tmp_path."""

    def make(*overrides: str, output: str = "run") -> Config:
        base = [f"output_dir={tmp_path / output}", f"data.cache_dir={data_cache}"]
        return load_config(TINY, base + list(overrides))

    return make
