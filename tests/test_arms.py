"""Arms (t2ilab arms): exact branching from one untouched checkpoint, `continue` equal to the uninterrupted run, the
restart's new cosine, verdicts from Newcombe's interval, no retraining on a second run, and notebook 06 (tiny, CPU)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import nbformat
import pytest
import torch
from safetensors.torch import load_file
from t2ilab import cli
from t2ilab.config import ConfigError, load_config
from t2ilab.intervals import change_word, difference_interval
from t2ilab.reporting.reports import execute_notebook
from t2ilab.review import arms, arms_report
from t2ilab.review.judge import SKILLS
from t2ilab.training.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "configs" / "tiny.yaml"
COSINE = ("training.lr_scheduler=cosine", "training.checkpoint_every_n_epochs=1")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_cache) -> Path:
    """An uninterrupted 4-epoch cosine run with a checkpoint every epoch: epoch 2 is the source, 3 and 4 the references."""
    out = tmp_path_factory.mktemp("straight")
    cfg = load_config(TINY, [f"output_dir={out}", f"data.cache_dir={data_cache}", *COSINE])
    train(cfg, progress="none")
    return out


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_weights(a: Path, b: Path) -> None:
    for part in ("unet", "unet_ema", "text_encoder"):
        (fa,), (fb,) = (a / part).glob("*.safetensors"), (b / part).glob("*.safetensors")
        wa, wb = load_file(fa), load_file(fb)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{part} differs between {a} and {b}"


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_arms_branch_exactly_and_leave_the_source_untouched(straight, capsys):
    source = straight / "checkpoint-epoch-0002"
    before = checksums(source)
    code = cli.main(["arms", str(source), "--arms", "continue,restart,more_data", "--epochs", "1",
                     "--n-per-category", "2", "--progress", "none"])
    printed = capsys.readouterr().out
    assert code == 0
    assert checksums(source) == before, "the source checkpoint was modified"

    result = json.loads((straight / "arms" / "arms.json").read_text())  # default --out: the checkpoint's run folder
    assert result["complete"] and list(result["arms"]) == ["continue", "restart", "more_data"]
    for name, record in result["arms"].items():
        assert record["started_from"] == str(source) and all(record["starts_exactly"].values()), name
        assert set(record["starts_exactly"]) == {"unet", "unet_ema", "text_encoder", "optimizer"}
        assert Path(record["checkpoint"]) == straight / "arms" / name / "checkpoint-epoch-0003"
    # continue for one epoch is the uninterrupted run's epoch 3, bit for bit
    assert_same_weights(Path(result["arms"]["continue"]["checkpoint"]), straight / "checkpoint-epoch-0003")
    # more_data trains on twice the images: more steps in the same epoch, weights no longer the straight run's
    assert result["arms"]["more_data"]["steps"] > result["arms"]["continue"]["steps"] == 3

    # every verdict is Newcombe's interval of the pooled hit counts, recomputed here
    base = result["arms"]["continue"]["judged"]
    for name in ("restart", "more_data"):
        judged, versus = result["arms"][name]["judged"], result["arms"][name]["vs_baseline"]
        a, b = judged["overall"], base["overall"]
        assert a["n"] == b["n"] == 2 * 6
        diff, low, high = difference_interval(a["hits"], a["n"], b["hits"], b["n"])
        assert versus["overall"] == pytest.approx({"difference": diff, "ci_low": low, "ci_high": high,
                                                   "verdict": change_word(low, high, *arms.VERDICTS)})
        assert set(versus["skills"]) <= set(SKILLS) and versus["skills"]
        assert result["arms"][name]["judged"]["skills"] and all(s["n"] >= 1 for s in judged["skills"])
    assert result["arms"]["continue"]["vs_baseline"] is None

    # the printed table: every arm with its verdict, and the minutes per arm
    assert "source (epoch 2)" in printed and "the baseline" in printed and "Minutes per arm:" in printed
    for name in ("continue", "restart", "more_data"):
        assert name in printed
    for versus in (result["arms"][n]["vs_baseline"]["overall"] for n in ("restart", "more_data")):
        assert versus["verdict"] in printed
    assert (straight / "arms" / "arms.txt").read_text().strip() == arms_report.render(result).strip()

    # a second run retrains nothing: the final checkpoints stay byte-identical and are reported as reused
    finals = {n: checksums(Path(r["checkpoint"])) for n, r in result["arms"].items()}
    again = arms.run_arms(source, arms=["continue", "restart", "more_data"], epochs=1, n_per_category=2,
                          progress="none", log=lambda line: None)
    assert {n: checksums(Path(r["checkpoint"])) for n, r in again["arms"].items()} == finals
    assert all(r["status"].startswith("already trained") for r in again["arms"].values())
    assert again["arms"]["restart"]["judged"] == result["arms"]["restart"]["judged"]


def test_an_interrupted_arm_continues_exactly_and_a_foreign_one_is_refused(straight, tmp_path):
    source = straight / "checkpoint-epoch-0002"
    first = arms.run_arms(source, tmp_path, ["continue", "lower_lr"], epochs=1, n_per_category=1, progress="none",
                          log=lambda line: None)
    assert first["arms"]["lower_lr"]["lr_first"] == pytest.approx(
        0.5 * first["source"]["learning_rate_at_checkpoint"] * 0.5 * (1 + math.cos(math.pi / 6)))
    # epochs=2: continue's epoch-3 checkpoint is an interrupted attempt of the same arm; it goes on from there
    longer = arms.run_arms(source, tmp_path, ["continue"], epochs=2, n_per_category=1, progress="none", log=lambda line: None)
    record = longer["arms"]["continue"]
    assert record["started_from"] == str(tmp_path.resolve() / "arms" / "continue" / "checkpoint-epoch-0003")
    assert all(record["starts_exactly"].values())
    assert_same_weights(Path(record["checkpoint"]), straight / "checkpoint-epoch-0004")
    # restart over 1 extra epoch is another run than restart over 2 (num_epochs differs): refused, not mixed
    arms.run_arms(source, tmp_path, ["restart"], epochs=1, n_per_category=1, progress="none", log=lambda line: None)
    with pytest.raises(arms.ArmsError, match="holds another run"):
        arms.run_arms(source, tmp_path, ["restart"], epochs=2, n_per_category=1, progress="none", log=lambda line: None)


def test_lr_restart_starts_a_new_cosine_and_an_interrupted_restart_goes_on(tiny_config):
    train(tiny_config(*COSINE), progress="none", stop_at_epoch=2)  # 2 of 4 epochs, 3 steps each
    peak = 4e-4
    restart = tiny_config(*COSINE, f"training.lr_restart={peak}", "training.num_epochs=5")
    train(restart, resume="latest", progress="none", stop_at_epoch=4)  # interrupted after 2 of its 3 epochs
    result = train(restart, resume="latest", progress="none")
    log = (result.output_dir / "train.log").read_text()
    assert "restart from peak 4.00e-04 (training.lr_restart" in log
    assert "schedule restored exactly" in log, "resuming the restarted run must not restart it again"
    logged = {r["step"]: r["lr"] for r in metrics(result.output_dir) if r["type"] == "train" and r["step"] > 6}
    # the LR after optimizer step s (scheduler stepped s - 6 times in the new 9-step segment): peak * cosine
    expected = {s: peak * 0.5 * (1 + math.cos(math.pi * (s - 6) / 9)) for s in range(7, 16)}
    assert logged.keys() == expected.keys()
    assert all(logged[s] == pytest.approx(expected[s], rel=1e-9, abs=1e-15) for s in expected)


def test_lr_restart_is_validated_and_refused_on_a_fresh_run(tiny_config):
    with pytest.raises(ConfigError, match="training.lr_restart"):
        tiny_config("training.lr_restart=-1e-4")
    with pytest.raises(ConfigError, match="training.lr_restart=0.0001 restarts the schedule of a resumed run"):
        train(tiny_config("training.lr_restart=1e-4"), progress="none")


def test_bad_arms_requests_name_what_to_do(straight, tmp_path):
    source = arms.read_source(straight / "checkpoint-epoch-0002")
    with pytest.raises(arms.ArmsError, match="unknown: \\['faster'\\]"):
        arms.plan_arms(source, ["continue", "faster"], 1, tmp_path)
    with pytest.raises(arms.ArmsError, match="--epochs must be from 1"):
        arms.plan_arms(source, ["continue"], 0, tmp_path)
    with pytest.raises(arms.ArmsError, match="inside the source checkpoint"):
        arms.plan_arms(source, ["continue"], 1, source.checkpoint)
    # the source ends at epoch 4: every arm's num_epochs is raised to reach 4 + 3, and the reader is told
    late = arms.read_source(straight / "checkpoint-epoch-0004")
    (plan,) = arms.plan_arms(late, ["continue"], 3, tmp_path)
    assert "training.num_epochs=7" in plan.overrides and "stretched" in plan.notes[0]


def test_notebook_06_runs_the_arms_headless(straight, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    output = tmp_path / "06_resume_arms.ipynb"
    parameters = {"checkpoint": str(straight / "checkpoint-epoch-0002"), "arms": ["continue", "lower_lr"], "epochs": 1,
                  "n_per_category": 1, "seed": 0, "output": str(tmp_path / "nb"), "paths_relative_to": str(REPO_ROOT)}
    error = execute_notebook(REPO_ROOT / "notebooks" / "06_resume_arms.ipynb", output, parameters, timeout=300)
    assert error is None, error
    nb = nbformat.read(output, as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    images = sum(any(m.startswith("image/") for m in o.get("data", {})) for o in outputs)
    assert "lower_lr" in text and "the baseline" in text and "train minutes" in text
    assert images == 1, "the skills-per-arm plot is shown as a static image"
    assert json.loads((tmp_path / "nb" / "arms" / "arms.json").read_text())["complete"]
