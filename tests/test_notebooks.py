"""The committed notebooks: clean (no outputs), one literal `parameters` cell, no def/class, a title; and they run
headless under papermill with tiny parameters, writing what a reader needs (03 and 04 run in test_reports.py).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import nbformat
import papermill
import pytest
from t2ilab.reporting.reports import execute_notebook
from t2ilab.training.checkpoint import list_checkpoints

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
TINY = REPO_ROOT / "configs" / "tiny.yaml"
EXPECTED = ["01_train.ipynb", "02_resume.ipynb", "03_loss_diagnosis.ipynb", "04_quality_review.ipynb",
            "05_explore.ipynb", "06_resume_arms.ipynb"]
LITERALS = (ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.UnaryOp)  # UnaryOp: negative numbers such as -1


def _code(cell) -> str:
    """Cell source with IPython magics (%load_ext, !cmd) removed, so ast can parse it."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines())


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)
    if isinstance(node, (ast.List, ast.Tuple)):
        return all(_is_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _is_literal(k) and _is_literal(v) for k, v in zip(node.keys, node.values))
    return isinstance(node, ast.Constant)


@pytest.fixture(scope="module")
def one_thread_kernels():
    """Kernels inherit the environment: one OpenMP thread each runs tiny models ~10x faster on shared cores."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def test_every_notebook_is_committed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_notebook_is_clean_and_thin(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), f"{name} carries outputs"
    title = nb.cells[0]
    assert title.cell_type == "markdown" and title.source.startswith("# ")
    assert "T2ILAB_HEADLESS=1 papermill notebooks/" in title.source, "the title cell says how to run it headless"
    assert "%autoreload 2" in code[0].source, "first code cell loads autoreload"

    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", f"{name}: exactly one cell tagged parameters"
    tree = ast.parse(tagged[0].source)
    assert tree.body, "the parameters cell is empty"
    for statement in tree.body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, ast.dump(statement)
        assert isinstance(statement.targets[0], ast.Name), ast.dump(statement)
        assert _is_literal(statement.value), f"{name}: {statement.targets[0].id} is not a literal"
    names = [statement.targets[0].id for statement in tree.body]
    assert list(papermill.inspect_notebook(str(NOTEBOOKS / name))) == names, "papermill sees every parameter"
    comment_lines = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(tagged[0].source).readline)
                     if tok.type == tokenize.COMMENT}
    for statement in tree.body:
        assert statement.lineno in comment_lines, f"{name}: {statement.targets[0].id} has no inline comment"

    for cell in code:
        for node in ast.walk(ast.parse(_code(cell))):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)), \
                f"{name}: a def/class belongs in lib/t2ilab, not in a notebook cell"


def _outputs(nb) -> tuple[str, int]:
    """All text the executed notebook shows, and how many images."""
    texts, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", ""))
            data = out.get("data", {})
            texts.append(str(data.get("text/plain", "")))
            images += any(mime.startswith("image/") for mime in data)
    return "\n".join(texts), images


def _run(name: str, out_dir: Path, **parameters):
    output = out_dir / name
    error = execute_notebook(NOTEBOOKS / name, output, parameters, timeout=300)
    assert error is None, f"{name} failed: {error}"
    return nbformat.read(output, as_version=4)


def test_train_resume_and_explore_notebooks_run_headless(tmp_path, data_cache, one_thread_kernels):
    run = tmp_path / "run"
    overrides = [f"output_dir={run}", f"data.cache_dir={data_cache}"]

    trained = _run("01_train.ipynb", tmp_path, config_path=str(TINY), overrides=overrides, stop_at_epoch=2)
    text, images = _outputs(trained)
    assert [m["epoch"] for _, m in list_checkpoints(run)] == [2]
    assert "stop_at_epoch: epoch 2" in text and "milestones: [2, 4]" in text
    assert re.search(r"epoch 2 step \d+ train_loss: ", text), "plain progress lines are shown headless"
    assert images >= 1, "the loss plot is shown as a static image"

    resumed = _run("02_resume.ipynb", tmp_path, output_dir=str(run), checkpoint="latest", num_epochs=5)
    text, images = _outputs(resumed)
    assert "resume plan:" in text and "training.num_epochs 4 -> 5" in text
    assert "3 epochs left" in text, "the ETA counts the epochs to the new num_epochs"
    assert [m["epoch"] for _, m in list_checkpoints(run)] == [2, 4, 5]
    assert images >= 1

    explored = _run("05_explore.ipynb", tmp_path, output_dir=str(run), prompt="a red circle")
    text, images = _outputs(explored)
    assert "headless run: no widgets" in text and "epoch 5" in text
    assert images == 1 and "Widget" not in text
