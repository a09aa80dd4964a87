"""The committed example report set stays small, self-contained and rebuildable by one command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from t2ilab.reporting.example_report import ExampleError, build_example, main

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "reports" / "example"
MAX_BYTES = 3_000_000  # the index and one milestone with its images inlined: ~1.7 MB


def test_the_committed_example_is_small_and_every_link_resolves():
    files = [f for f in EXAMPLE.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < MAX_BYTES
    (milestone,) = [d for d in EXAMPLE.iterdir() if d.is_dir()]
    for name in ("loss_diagnosis", "quality_review"):
        for suffix in (".ipynb", ".html", ".metrics.json"):
            assert (milestone / f"{name}{suffix}").is_file()
    page = (EXAMPLE / "index.html").read_text()
    links = re.findall(r'(?:href|src)="([^"#:]+)"', page)
    assert links and all((EXAMPLE / link).is_file() for link in links), "no link into a milestone left out"
    md = (EXAMPLE / "index.md").read_text()
    assert all((EXAMPLE / link).is_file() for link in re.findall(r"\]\(([^)#:]+)\)", md))
    for f in files:
        if f.suffix in (".md", ".html", ".ipynb", ".json"):
            assert "/work/" not in f.read_text(), f"{f.name} names the build machine's paths"


def test_the_example_index_shows_what_its_milestone_sidecar_measured():
    (milestone,) = [d for d in EXAMPLE.iterdir() if d.is_dir()]
    metrics = json.loads((milestone / "quality_review.metrics.json").read_text())["metrics"]
    epoch = int(milestone.name.split("-")[1])
    md = (EXAMPLE / "index.md").read_text()
    row = next(line for line in md.split("## Skills")[0].splitlines() if line.startswith(f"| {epoch} |"))
    low, high = metrics["overall_ci"]
    assert f"{metrics['overall']:.3f} [{low:.3f}, {high:.3f}]" in row
    skill_row = next(line for line in md.split("## Skills")[1].splitlines() if line.startswith(f"| {epoch} |"))
    color = next(s for s in metrics["skills"] if s["skill"] == "color")
    assert f"{color['accuracy']:.2f} [{color['ci_low']:.2f}, {color['ci_high']:.2f}]" in skill_row


def _report_set(root: Path) -> Path:
    source = root / "repo" / "reports" / "run"
    for epoch in (2, 4):
        folder = source / f"epoch-{epoch:04d}"
        folder.mkdir(parents=True)
        (folder / "quality_review.html").write_text(f"<p>checkpoint {root}/repo/outputs/run/checkpoint-epoch-{epoch:04d}</p>")
        (folder / "quality_review.ipynb").write_text(json.dumps({"cells": [], "path": f"{root}/repo/outputs/run"}))
    (source / "quality_vs_epoch.png").write_bytes(b"\x89PNG")
    (source / "index.md").write_text(f"# Reports for run\nRun: `{root}/repo/outputs/run`.\n"
                                     "| 2 | [html](epoch-0002/quality_review.html) |\n| 4 | [html](epoch-0004/quality_review.html) |\n")
    (source / "index.html").write_text('<h1>Reports for run</h1><a href="epoch-0002/quality_review.html">html</a> '
                                       '<a href="epoch-0004/quality_review.html">html</a>')
    return source


def test_build_keeps_the_last_milestone_unlinks_the_others_and_strips_the_repo_path(tmp_path):
    out = build_example(_report_set(tmp_path), tmp_path / "example")
    assert sorted(p.name for p in out.iterdir()) == ["epoch-0004", "index.html", "index.md", "quality_vs_epoch.png"]
    md, page = (out / "index.md").read_text(), (out / "index.html").read_text()
    assert "| 2 | html |" in md and "[html](epoch-0004/quality_review.html)" in md
    assert 'href="epoch-0002' not in page and 'href="epoch-0004/quality_review.html"' in page
    assert "make example-report" in md and "make example-report" in page
    assert str(tmp_path) not in md and "Run: `outputs/run`" in md
    assert "checkpoint outputs/run/checkpoint-epoch-0004" in (out / "epoch-0004" / "quality_review.html").read_text()
    assert json.loads((out / "epoch-0004" / "quality_review.ipynb").read_text())["path"] == "outputs/run"
    build_example(_report_set(tmp_path / "again"), out)  # rebuilt in place: replaced whole, nothing stale left
    assert sorted(p.name for p in out.iterdir()) == ["epoch-0004", "index.html", "index.md", "quality_vs_epoch.png"]


def test_an_incomplete_source_is_refused_with_the_command_that_makes_it(tmp_path, capsys):
    (tmp_path / "reports" / "demo").mkdir(parents=True)
    with pytest.raises(ExampleError, match="make demo"):
        build_example(tmp_path / "reports" / "demo", tmp_path / "example")
    assert main(["--source", str(tmp_path / "nothing"), "--destination", str(tmp_path / "example")]) == 2
    assert "make demo" in capsys.readouterr().err and not (tmp_path / "example").exists()
