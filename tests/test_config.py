"""Config validation: every mistake names its field, the value, the file and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from t2ilab.config import ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.batch_size=-4", r"training\.batch_size = -4 is not allowed: input should be greater than or equal to 1"),
        ("data.resolution=7", r"data\.resolution = 7 is not allowed: .*greater than or equal to 16"),
        ("training.learning_rate=-1", r"training\.learning_rate = -1 is not allowed: .*greater than 0"),
        ("training.num_epochs=abc", r"training\.num_epochs = 'abc' is not allowed: .*valid integer"),
        ("training.bogus=1", r"unknown key 'training\.bogus'.*allowed keys here: num_epochs, batch_size"),
        ("colour=red", r"unknown key 'colour'.*allowed keys here: output_dir, data, model"),
        ("noise.prediction_type=x0", r"noise\.prediction_type = 'x0' is not allowed: input should be 'epsilon' or 'v_prediction'"),
        ("data.category_mix={shapes: 1}", r"data\.category_mix: unknown categories \['shapes'\]"),
        ("model.attention_levels=[true]", r"attention_levels has 1 entries but model\.block_out_channels has 2"),
    ],
)
def test_errors_name_field_value_and_file(override, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(REPO_ROOT / "configs/tiny.yaml", [override])
    assert "configs/tiny.yaml" in str(err.value)


def test_overrides_are_typed_and_applied():
    cfg = load_config(REPO_ROOT / "configs/tiny.yaml", ["training.num_epochs=300", "training.learning_rate=5e-5"])
    assert cfg.training.num_epochs == 300 and cfg.training.learning_rate == 5e-5


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  num_epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml line \d+: malformed YAML"):
        load_config(bad)


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["training.num_epochs"])


def test_shipped_configs_load_and_keep_the_old_run_keys():
    real = load_config(REPO_ROOT / "configs/train_config.yaml")
    assert (real.data.num_samples, real.training.batch_size, real.training.num_epochs) == (5000, 96, 200)
    assert real.output_dir == "./outputs"
    for name in ("demo.yaml", "tiny.yaml"):
        load_config(REPO_ROOT / "configs" / name)


def test_milestones_combine_list_and_interval():
    cfg = load_config(None, ["training.num_epochs=100", "reports.milestones=[30, 500]", "reports.every_n_epochs=40"])
    assert cfg.milestone_epochs() == {30, 40, 80}
