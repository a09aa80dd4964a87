"""The report runner on one tiny trained run: reports per milestone, up-to-date skips, reruns of what changed,
failures in the index, escaping, the CLI's errors, background reports; and the explorer without a browser.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from t2ilab.config import load_config
from t2ilab.reporting.report_notebook import REPORT_BUDGET_BYTES, shrink_images
from t2ilab.reporting.reports import NOTEBOOKS, ReportError, main, run_reports, start_background_reports
from t2ilab.sampling import explore
from t2ilab.training.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "configs" / "tiny.yaml"
SCRIPT = "<script>alert(1)</script>"
# Quality review at test size: 2 images per category, a 1 x 1 x 2 sampler sweep (tiny.yaml samples with 4 steps).
QUALITY = {"n_per_category": 2, "sweep_schedulers": ["dpmsolver++"], "sweep_steps": [4], "sweep_guidances": [1.0, 3.0],
           "sweep_n_per_category": 2, "quick": True}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One OpenMP thread in this process and in the kernels it starts: tiny models on shared cores run ~10x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_cache, one_thread) -> Path:
    out = tmp_path_factory.mktemp("reports_run") / "tinyrun"
    cfg = load_config(TINY, [f"output_dir={out}", f"data.cache_dir={data_cache}"])
    train(cfg, progress="none")
    return out


@pytest.fixture(scope="module")
def params(tmp_path_factory) -> dict:
    """run_reports params: QUALITY, and review prompts with markup in a user prompt (reports must show it as text)."""
    prompts = yaml.safe_load((REPO_ROOT / "configs" / "review_prompts.yaml").read_text())
    prompts["prompt_pairs"] = [{"short": "a red circle", "detailed": f"a red circle {SCRIPT}"}]
    prompts_file = tmp_path_factory.mktemp("prompts") / "review_prompts.yaml"
    prompts_file.write_text(yaml.safe_dump(prompts))
    return {"quality_review": QUALITY | {"review_prompts": str(prompts_file)}}


@pytest.fixture(scope="module")
def first(run, params, tmp_path_factory):
    """Reports for every milestone, once for the module: (reports dir, results)."""
    reports_dir = tmp_path_factory.mktemp("reports")
    return reports_dir, run_reports(run, "all", reports_dir=reports_dir, params=params)


@pytest.fixture
def reports_copy(first, tmp_path) -> Path:
    """A private copy of the module's reports, for tests that change them."""
    return Path(shutil.copytree(first[0], tmp_path / "reports"))


def _sidecar(reports_dir: Path, epoch: int, name: str) -> dict:
    return json.loads((reports_dir / "tinyrun" / f"epoch-{epoch:04d}" / f"{name}.metrics.json").read_text())


def test_runner_writes_every_report_of_every_milestone(first, run):
    reports_dir, results = first
    assert [(r.epoch, r.notebook, r.status) for r in results] == [
        (2, "loss_diagnosis", "ok"), (2, "quality_review", "ok"),
        (4, "loss_diagnosis", "ok"), (4, "quality_review", "ok")]
    for epoch in (2, 4):
        folder = reports_dir / "tinyrun" / f"epoch-{epoch:04d}"
        for name in NOTEBOOKS:
            for ext in (".ipynb", ".html", ".metrics.json"):
                assert (folder / f"{name}{ext}").is_file()
            nb = nbformat.read(folder / f"{name}.ipynb", as_version=4)
            assert any(c.get("outputs") for c in nb.cells), "report notebooks keep their outputs"
            html = (folder / f"{name}.html").read_text()
            assert "%autoreload" not in html and "import pandas" not in html, "code is hidden in the HTML"
        diagnosis = _sidecar(reports_dir, epoch, "loss_diagnosis")
        assert diagnosis["status"] == "ok" and diagnosis["epoch"] == epoch and diagnosis["schema_version"] == 1
        assert diagnosis["metrics"]["val_points"] == epoch, "the log is cut at the milestone's checkpoint"
        assert (diagnosis["metrics"]["verdict"] == "too_early") == (epoch == 2), "a verdict needs 4 validation epochs"
        assert diagnosis["parameters"]["checkpoint"].endswith(f"checkpoint-epoch-{epoch:04d}")
        assert 0 < diagnosis["size_bytes"]["total"] < 3_000_000 + 1_000_000
        quality = _sidecar(reports_dir, epoch, "quality_review")
        assert quality["metrics"]["epoch"] == epoch and quality["metrics"]["n_per_category"] == 2
        assert {row["category"] for row in quality["metrics"]["scores"]} >= {"colors", "counting"}
        expected_previous = None if epoch == 2 else str(run / "checkpoint-epoch-0002")
        assert quality["parameters"]["previous_checkpoint"] == expected_previous
        if epoch == 4:  # "better than epoch 2?" reads epoch 2's report instead of sampling its checkpoint again
            versus = quality["metrics"]["vs_previous"]
            assert versus["previous_source"].startswith("read from the previous milestone's report")
            assert versus["previous_overall"] == _sidecar(reports_dir, 2, "quality_review")["metrics"]["overall"]
            assert "previous" in quality["metrics"]["timings"]
        page = (folder / "quality_review.html").read_text()
        assert "judge on real images" in page and "<table" in page and "answered from the sampler sweep" in page
        assert "what it checks" in page and "whatever the colour" in page, "the skills table is in the review"
        assert "Empty DataFrame" not in page and ">NaN<" not in page and ">nan<" not in page
        if epoch == 4:
            assert "Since epoch 2:" in page, "the review says what changed since the previous milestone"
        assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page, "a prompt shows as text"


def test_index_lists_every_milestone_with_losses_scores_and_links(first):
    reports_dir, results = first
    folder = reports_dir / "tinyrun"
    md = (folder / "index.md").read_text()
    milestones, skills = md.split("## Skills, each judged on its own")
    rows = [line for line in milestones.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(r.split("|")[1]) for r in rows] == [2, 4]
    for row in rows:
        assert "[ipynb](epoch-" in row and "[html](epoch-" in row and "FAILED" not in row
        cells = [c.strip() for c in row.split("|")]
        assert re.fullmatch(r"\d\.\d+(e-\d+)?", cells[4]), f"validation loss in {row}"
    skill_rows = [line for line in skills.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(r.split("|")[1]) for r in skill_rows] == [2, 4]
    assert re.search(r"\| 0\.\d\d \[0\.\d\d, [01]\.\d\d\] \|", skill_rows[0]), "score [95% CI] per skill"
    assert "Since epoch 2:" in skill_rows[1] and "first milestone" in skill_rows[0]
    html = (folder / "index.html").read_text()
    assert html.count('href="epoch-0002/') == 4 and html.count('href="epoch-0004/') == 4
    image = Image.open(folder / "quality_vs_epoch.png")
    assert image.width >= 400 and results[0].index_html == folder / "index.html"


def test_second_run_skips_everything_up_to_date(first, run, params):
    reports_dir, _ = first
    before = {p: p.stat().st_mtime_ns for p in (reports_dir / "tinyrun").rglob("*.ipynb")}
    results = run_reports(run, "all", reports_dir=reports_dir, params=params)
    assert {r.status for r in results} == {"skipped"} and len(results) == 4
    assert before == {p: p.stat().st_mtime_ns for p in (reports_dir / "tinyrun").rglob("*.ipynb")}


def test_changed_parameter_or_notebook_reruns_just_that_report(run, params, reports_copy, tmp_path):
    results = run_reports(run, "2", reports_dir=reports_copy, params=params | {"last_k": 5})
    assert [(r.notebook, r.status) for r in results] == [("loss_diagnosis", "ok"), ("quality_review", "skipped")]
    assert _sidecar(reports_copy, 2, "loss_diagnosis")["parameters"]["last_k"] == 5

    notebooks = Path(shutil.copytree(REPO_ROOT / "notebooks", tmp_path / "notebooks"))
    same = run_reports(run, "2", reports_dir=reports_copy, params=params | {"last_k": 5}, notebooks_dir=notebooks)
    assert {r.status for r in same} == {"skipped"}, "an identical copy of the notebooks is up to date"
    source = notebooks / NOTEBOOKS["loss_diagnosis"]
    nb = nbformat.read(source, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("An added note."))
    nbformat.write(nb, source)
    edited = run_reports(run, "2", reports_dir=reports_copy, params=params | {"last_k": 5}, notebooks_dir=notebooks)
    assert [(r.notebook, r.status) for r in edited] == [("loss_diagnosis", "ok"), ("quality_review", "skipped")]
    assert "An added note." in (reports_copy / "tinyrun" / "epoch-0002" / "loss_diagnosis.html").read_text()


def test_failing_notebook_is_reported_as_failed_and_escaped(run, params, reports_copy, tmp_path, capsys):
    notebooks = Path(shutil.copytree(REPO_ROOT / "notebooks", tmp_path / "notebooks"))
    source = notebooks / NOTEBOOKS["loss_diagnosis"]
    nb = nbformat.read(source, as_version=4)
    nb.cells.insert(1, nbformat.v4.new_code_cell(f"raise RuntimeError({SCRIPT!r})"))
    nbformat.write(nb, source)
    cli_params = [f"--set=quality_review.{k}={json.dumps(v)}" for k, v in params["quality_review"].items()]
    code = main(["--run", str(run), "--milestones", "2", "--reports-dir", str(reports_copy), "--notebooks-dir",
                 str(notebooks), *cli_params])
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(r"epoch +2 +loss_diagnosis +failed", out) and re.search(r"quality_review +skipped", out)
    record = _sidecar(reports_copy, 2, "loss_diagnosis")
    assert record["status"] == "failed" and record["error"] == f"RuntimeError: {SCRIPT}" and record["metrics"] is None
    failed_nb = reports_copy / "tinyrun" / "epoch-0002" / "loss_diagnosis.ipynb"
    assert "RuntimeError" in failed_nb.read_text(), "the failed notebook is kept with its traceback"
    for page in (reports_copy / "tinyrun" / "index.html", failed_nb.with_suffix(".html")):
        text = page.read_text()
        assert SCRIPT not in text and "&lt;script&gt;alert(1)" in text, page
    html = (reports_copy / "tinyrun" / "index.html").read_text()
    assert "FAILED: RuntimeError: &lt;script&gt;" in html
    assert "FAILED: RuntimeError" in (reports_copy / "tinyrun" / "index.md").read_text()
    assert _sidecar(reports_copy, 4, "loss_diagnosis")["status"] == "ok", "other milestones are untouched"


def test_unknown_milestone_or_notebook_is_a_clear_error(run, tmp_path, capsys):
    assert main(["--run", str(run), "--milestones", "3", "--reports-dir", str(tmp_path)]) == 2
    assert "no milestone checkpoint for epoch(s) [3]" in capsys.readouterr().err
    with pytest.raises(ReportError, match="available milestones: 2, 4"):
        run_reports(run, "2,5", reports_dir=tmp_path)
    with pytest.raises(ReportError, match="available: loss_diagnosis, quality_review"):
        run_reports(run, "2", notebooks=["fid"], reports_dir=tmp_path)
    with pytest.raises(ReportError, match="declares a parameter 'n_per_categroy'"):
        run_reports(run, "2", reports_dir=tmp_path, params={"n_per_categroy": 2})
    assert not list(tmp_path.rglob("*.ipynb")), "nothing runs after a bad request"


def test_background_reports_run_in_their_own_process(run, reports_copy):
    cfg = load_config(Path(run) / "checkpoint-epoch-0002" / "config.yaml",
                      [f"output_dir={run}", f"reports.reports_dir={reports_copy}",
                       "reports.notebooks=[loss_diagnosis]"])
    process = start_background_reports(cfg, 2)
    assert isinstance(process, subprocess.Popen) and process.wait(timeout=120) == 0
    log = (Path(run) / "reports-epoch-0002.log").read_text()
    assert re.search(r"epoch +2 +loss_diagnosis +skipped", log), log


def test_explorer_generates_without_a_browser(run):
    choices = explore.list_checkpoint_choices(run)
    assert [label.split(",")[0] for label, _ in choices] == ["epoch 4", "epoch 2"]
    latest = choices[0][1]
    image, info = explore.generate(latest, "a red circle", scheduler="ddim", steps=3, guidance=2.0, seed=5)
    again, _ = explore.generate(latest, "a red circle", scheduler="ddim", steps=3, guidance=2.0, seed=5)
    assert image.size == (16, 16) and np.array_equal(np.asarray(image), np.asarray(again)), "same seed, same image"
    assert info["epoch"] == 4 and info["weights"] == "ema" and info["unknown_words"] == []

    box = explore.build_explorer(run)
    controls = box.controls
    controls["prompt"].value = f"a zebra {SCRIPT}"
    controls["checkpoint"].value = choices[1][1]
    controls["steps"].value, controls["seed"].value, controls["weights"].value = 3, 1, "raw"
    assert box.image.value == b""
    box.button.click()
    shown = Image.open(io.BytesIO(box.image.value))
    assert shown.size == (256, 256), "16 px upscaled with visible pixels"
    assert "epoch 2 (raw weights)" in box.check.value and "zebra" in box.check.value
    # The words of "<script>alert(1)</script>" are listed as text; no markup from the prompt reaches the widget.
    assert "script, alert" in box.check.value and "<script" not in box.check.value


def test_large_images_are_shrunk_to_the_report_budget():
    noise = np.random.default_rng(0).integers(0, 256, (900, 1200, 3), dtype=np.uint8)  # incompressible: ~3 MB PNG
    cells = []
    for _ in range(3):
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, "PNG")
        data = {"image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": "<Figure>"}
        cells.append(nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output("display_data", data=data)]))
    nb = nbformat.v4.new_notebook(cells=cells)
    total = shrink_images(nb)
    assert total < REPORT_BUDGET_BYTES and len(nbformat.writes(nb)) < REPORT_BUDGET_BYTES
    for cell in nb.cells:
        data = cell.outputs[0]["data"]
        image = Image.open(io.BytesIO(base64.b64decode(data.get("image/png") or data["image/jpeg"])))
        assert image.width >= 300, "shrunk, not destroyed"


def test_sigkill_during_report_generation_redoes_only_the_broken_report(run, params, reports_copy):
    """Kill the runner while epoch 4's quality review executes: rerunning redoes just that report."""
    import os
    import signal
    import sys
    import time

    epoch4 = reports_copy / "tinyrun" / "epoch-0004"
    (epoch4 / "quality_review.metrics.json").unlink()  # epoch 4's review must be (re)generated
    before = {str(p.relative_to(reports_copy)): p.stat().st_mtime_ns for p in reports_copy.rglob("*.metrics.json")}
    cmd = [sys.executable, "-m", "t2ilab", "report", "--run", str(run), "--reports-dir", str(reports_copy)]
    for key, value in params["quality_review"].items():  # the module's parameters, so other reports stay up to date
        cmd += ["--set", f"quality_review.{key}={json.dumps(value)}"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 180
    output = ""
    while "epoch     4  loss_diagnosis" not in output:  # the runner has moved on to epoch 4's quality review
        line = proc.stdout.readline()
        assert line or proc.poll() is None, output
        output += line
        assert time.time() < deadline, output
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (epoch4 / "quality_review.metrics.json").exists(), "a killed report must not look complete"
    leftovers = list((REPO_ROOT / "notebooks").glob("kernel-ipc-*"))
    assert not leftovers, f"kernel sockets belong in a temp dir, not beside the notebooks: {leftovers}"

    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("epoch")]
    reran = [line.split()[2] for line in lines if " ok " in line]
    assert reran == ["quality_review"] and "epoch     4  quality_review   ok" in done.stdout
    after = {str(p.relative_to(reports_copy)): p.stat().st_mtime_ns for p in reports_copy.rglob("*.metrics.json")}
    assert (epoch4 / "quality_review.metrics.json").exists()
    assert len(after) == len(before) + 1
    assert all(after[k] == before[k] for k in before), "complete reports were not rewritten"
