"""The committed example report set (reports/example/): the index and the final milestone of a `make demo` run.

A reader sees what a report looks like before training anything. `make example-report` (or
`python -m t2ilab.reporting.example_report`) rebuilds it from reports/demo/; links to milestones left out point nowhere, so
they become plain text, and the build machine's absolute paths become paths relative to the repo.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from t2ilab.paths import checkout_root

INDEX_FILES = ("index.md", "index.html", "quality_vs_epoch.png")
OPTIONAL_INDEX_FILES = ("metrics_vs_epoch.png",)
MILESTONE = re.compile(r"epoch-(\d{4})$")
TEXT_SUFFIXES = (".md", ".html", ".ipynb", ".json")
NOTE = ("This example holds the index and the last milestone (epoch {epoch}) of one `make demo` run; the other "
        "milestones' reports are in reports/demo/ after `make demo`. Rebuild it with `make example-report`.")


class ExampleError(ValueError):
    """The source report set is missing or incomplete; the message names the path and the command that makes it."""


def _milestones(source: Path) -> list[str]:
    return sorted(p.name for p in source.iterdir() if p.is_dir() and MILESTONE.match(p.name))


def _unlink_missing(text: str, kept: str, suffix: str) -> str:
    """Links into milestones that are not in the example become their plain label."""
    if suffix == ".md":
        return re.sub(r"\[(\w+)\]\((epoch-\d{4})/[^)]*\)", lambda m: m.group(0) if m.group(2) == kept else m.group(1), text)
    if suffix == ".html":
        return re.sub(r'<a href="(epoch-\d{4})/[^"]*">([^<]*)</a>',
                      lambda m: m.group(0) if m.group(1) == kept else m.group(2), text)
    return text


def _with_note(text: str, note: str, suffix: str) -> str:
    if suffix == ".md":
        first, _, rest = text.partition("\n")
        return f"{first}\n\n> {note}\n{rest}"
    if suffix == ".html":
        return re.sub(r"(<h1>.*?</h1>)", lambda m: f"{m.group(1)}<p><em>{note}</em></p>", text, count=1)
    return text


def build_example(source: str | Path, destination: str | Path, repo_root: str | Path | None = None) -> Path:
    """Copy the index and the last milestone of `source` (`<repo>/reports/<run>`) to `destination`, replaced whole;
    paths under `repo_root` (default: the repo holding `source`) are written relative to it."""
    source, destination = Path(source), Path(destination)
    missing = [name for name in INDEX_FILES if not (source / name).is_file()]
    milestones = _milestones(source) if source.is_dir() else []
    if missing or not milestones:
        raise ExampleError(f"{source} is not a complete report set (missing: {', '.join(missing) or 'milestones'}); "
                           "run `make demo` first")
    kept = milestones[-1]
    prefix = str(Path(repo_root or source.resolve().parents[1]).resolve()) + "/"  # reports/<run> sits in the repo
    tmp = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / kept).mkdir(parents=True)
    for name in INDEX_FILES:
        shutil.copy2(source / name, tmp / name)
    for name in OPTIONAL_INDEX_FILES:  # written only when a review measured a distance (metric_curves)
        if (source / name).is_file():
            shutil.copy2(source / name, tmp / name)
    for path in (source / kept).iterdir():
        if path.is_file():
            shutil.copy2(path, tmp / kept / path.name)
    note = NOTE.format(epoch=int(MILESTONE.match(kept).group(1)))
    for path in tmp.rglob("*"):
        if path.suffix in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8").replace(prefix, "")
            if path.parent == tmp:
                text = _with_note(_unlink_missing(text, kept, path.suffix), note, path.suffix)
            path.write_text(text, encoding="utf-8")
    shutil.rmtree(destination, ignore_errors=True)
    tmp.rename(destination)
    return destination


def main(argv: list[str] | None = None) -> int:
    root = checkout_root() or Path.cwd()
    p = argparse.ArgumentParser(prog="python -m t2ilab.reporting.example_report", description=__doc__.splitlines()[0])
    p.add_argument("--source", default=str(root / "reports" / "demo"), help="a run's report folder (reports/demo)")
    p.add_argument("--destination", default=str(root / "reports" / "example"))
    args = p.parse_args(argv)
    try:
        out = build_example(args.source, args.destination)
    except ExampleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"example report set: {out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
