"""`t2ilab report`: execute the report notebooks for a run's milestone checkpoints into reports/<run>/epoch-NNNN/.

Each report is the executed notebook (.ipynb), its HTML with code hidden, and a .metrics.json sidecar written
last; a report whose checkpoint, notebook and parameters are unchanged is skipped. The index: report_index.py.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from t2ilab.config import Config, ConfigError, load_config, parse_override
from t2ilab.paths import NOTEBOOKS_DIR, resolve_path
from t2ilab.reporting.report_notebook import (  # noqa: F401  (ReportResult, execute_notebook: part of this module's API)
    DEFAULT_TIMEOUT,
    ReportResult,
    epoch_folder,
    execute_notebook,
    jsonable,
    kernel_name,
    run_one,
    write_text,
)
from t2ilab.training.checkpoint import CheckpointError, list_checkpoints

NOTEBOOKS = {"loss_diagnosis": "03_loss_diagnosis.ipynb", "quality_review": "04_quality_review.ipynb"}


class ReportError(ValueError):
    """Bad report request (unknown milestone or notebook, no checkpoints); the message lists what exists."""


def save_notebook_metrics(metrics_path: str | Path | None, data: dict) -> Path | None:
    """Write a notebook's results for the report runner as JSON; `metrics_path=None` writes nothing."""
    if metrics_path is None:
        return None
    path = Path(metrics_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(jsonable(data), indent=2, sort_keys=True, allow_nan=False))
    return path


def milestone_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """{epoch: checkpoint} for end-of-epoch checkpoints whose epoch is a milestone of their own run config."""
    found = {}
    for path, manifest in list_checkpoints(run_dir):
        if not manifest.get("end_of_epoch"):
            continue
        try:
            milestones = load_config(path / "config.yaml").milestone_epochs()
        except ConfigError:
            continue  # a config this version cannot read: not ours to report on
        if manifest.get("epoch") in milestones:
            found[int(manifest["epoch"])] = path
    return dict(sorted(found.items()))


def select_milestones(spec: str | list[int] | None, available: dict[int, Path], run_dir: Path) -> list[int]:
    """'all', '50,100' or a list of epochs -> the epochs to report; unknown ones are an error listing the rest."""
    if not available:
        raise ReportError(f"no milestone checkpoints in {run_dir}: train first (reports.milestones in the config "
                          f"marks which epochs are milestones)")
    if spec is None or spec == "all":
        return list(available)
    try:
        wanted = [int(m) for m in (spec.split(",") if isinstance(spec, str) else spec) if str(m).strip()]
    except ValueError:
        raise ReportError(f"--milestones {spec!r}: expected 'all' or epochs like 50,100") from None
    unknown = [m for m in wanted if m not in available]
    if unknown:
        raise ReportError(f"no milestone checkpoint for epoch(s) {unknown} in {run_dir}; available milestones: "
                          f"{', '.join(map(str, available))}")
    return wanted


def default_parameters(name: str, checkpoint: Path, previous: Path | None, run_dir: Path, cfg: Config,
                       previous_dir: Path | None = None, run_reports_dir: Path | None = None) -> dict:
    """The parameters the runner passes to a report notebook, from the checkpoint's run config.

    `previous_dir`: the previous milestone's report folder, whose quality review the new one reads its
    "better than before?" score from instead of sampling the previous checkpoint again; `run_reports_dir`: the
    run's reports folder, whose quality reviews give the loss diagnosis its skill curve."""
    if name == "loss_diagnosis":
        return {"run_dir": str(run_dir), "checkpoint": str(checkpoint)} | (
            {"reports_dir": str(run_reports_dir)} if run_reports_dir is not None else {})
    if name == "quality_review":  # sampler settings and N come from the checkpoint's config inside the notebook
        out = {"checkpoint": str(checkpoint), "previous_checkpoint": str(previous) if previous else None,
               "previous_review": str(previous_dir / f"{name}.metrics.json") if previous and previous_dir else None,
               "review_prompts": str(resolve_path(cfg.reports.review_prompts)),
               "data_cache_dir": str(resolve_path(cfg.data.cache_dir))}
        for key in ("clip_model", "inception_weights", "feature_extractor"):  # only when set: old report keys stay
            value = getattr(cfg.reports, key)
            if value:  # a path as seen from here (the notebook runs in notebooks/); a hub id stays as it is
                out[key] = str(Path(value).expanduser().resolve()) if Path(value).expanduser().exists() else value
        return out
    return {"checkpoint": str(checkpoint)}


def run_reports(run_dir: str | Path, milestones: str | list[int] | None = "all", notebooks: list[str] | None = None,
                reports_dir: str | Path | None = None, force: bool = False, params: dict | None = None,
                timeout: int = DEFAULT_TIMEOUT, notebooks_dir: str | Path | None = None,
                log: Callable[[str], None] = print) -> list[ReportResult]:
    """Execute the report notebooks for the chosen milestones, skip up-to-date ones, then write the index.

    `params`: a key naming a notebook ({"quality_review": {...}}) applies to it; any other key to every
    notebook that declares that parameter.
    """
    from t2ilab.reporting.report_index import write_index

    run = Path(run_dir).resolve()
    available = milestone_checkpoints(run)
    epochs = select_milestones(milestones, available, run)
    latest_cfg = load_config(available[epochs[-1]] / "config.yaml")
    names = list(notebooks or latest_cfg.reports.notebooks)
    nb_dir = Path(notebooks_dir).resolve() if notebooks_dir else NOTEBOOKS_DIR
    sources = _notebook_sources(names, nb_dir)
    overrides = _split_params(params or {}, sources)
    root = Path(reports_dir) if reports_dir else resolve_path(latest_cfg.reports.reports_dir)
    run_reports_dir = root.resolve() / run.name
    run_reports_dir.mkdir(parents=True, exist_ok=True)
    kernel = kernel_name()
    order = list(available)
    results = []
    with _runner_lock(run_reports_dir, log):
        for epoch in epochs:
            checkpoint = available[epoch]
            cfg = load_config(checkpoint / "config.yaml")
            previous_epoch = order[order.index(epoch) - 1] if order.index(epoch) > 0 else None
            previous, previous_dir = ((available[previous_epoch], epoch_folder(run_reports_dir, previous_epoch))
                                      if previous_epoch is not None else (None, None))
            for name in names:
                parameters = default_parameters(name, checkpoint, previous, run, cfg, previous_dir,
                                                run_reports_dir) | overrides[name]
                result = run_one(name, sources[name], checkpoint, epoch_folder(run_reports_dir, epoch), parameters,
                                 run.name, epoch, kernel, nb_dir, timeout, force)
                log(f"epoch {epoch:>5}  {name:<16} {result.status:<8} {result.seconds:7.1f} s  {result.notebook_path}"
                    + (f"\n    error: {result.error}" if result.error else ""))
                results.append(result)
        index = write_index(run_reports_dir, run, available)
    for result in results:
        result.index_html = index
    log(f"index: {index}")
    return results


def _notebook_sources(names: list[str], nb_dir: Path) -> dict[str, Path]:
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ReportError(f"unknown report notebook(s) {unknown}; available: {', '.join(NOTEBOOKS)}")
    sources = {n: nb_dir / NOTEBOOKS[n] for n in names}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise ReportError(f"report notebook(s) not found: {', '.join(missing)}; run from a t2ilab checkout or "
                          f"pass --notebooks-dir")
    return sources


def _split_params(params: dict, sources: dict[str, Path]) -> dict[str, dict]:
    """Per-notebook overrides; a shared key goes to the notebooks that declare it, an undeclared one is an error."""
    import papermill

    declared = {name: set(papermill.inspect_notebook(str(path))) for name, path in sources.items()}
    out: dict[str, dict] = {name: {} for name in sources}
    for key, value in params.items():
        if key in NOTEBOOKS:
            if key in sources:
                bad = sorted(set(value) - declared[key])
                if bad:
                    raise ReportError(f"{key} has no parameter(s) {bad}; it declares {sorted(declared[key])}")
                out[key].update(value)
            continue
        takers = [name for name in sources if key in declared[name]]
        if not takers:
            raise ReportError(f"no selected report notebook declares a parameter {key!r}; "
                              + "; ".join(f"{n}: {sorted(d)}" for n, d in declared.items()))
        for name in takers:
            out[name][key] = value
    return out


@contextmanager
def _runner_lock(folder: Path, log: Callable[[str], None]):
    """One runner per run at a time: background reports of the next milestone wait for the previous ones."""
    with open(folder / ".runner.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another report runner on {folder} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def start_background_reports(cfg: Config, epoch: int) -> subprocess.Popen:
    """Start `t2ilab report --run <output_dir> --milestones <epoch>` in its own process; training does not wait."""
    out = Path(cfg.output_dir)
    command = [sys.executable, "-m", "t2ilab", "report", "--run", str(out), "--milestones", str(epoch),
               "--notebooks", ",".join(cfg.reports.notebooks), "--reports-dir", cfg.reports.reports_dir]
    with open(out / f"reports-epoch-{epoch:04d}.log", "ab") as log_file:  # the child keeps its own handle
        # One OpenMP thread and a lower CPU priority: training keeps the machine, the report uses what is left.
        return subprocess.Popen(["nice", "-n", "10", *command], stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env=os.environ | {"T2ILAB_HEADLESS": "1", "OMP_NUM_THREADS": "1"})


def milestone_callback(cfg: Config) -> Callable[[Path, int], subprocess.Popen] | None:
    """For train(on_milestone=...): background reports when reports.on_milestone is set, else None."""
    if not cfg.reports.on_milestone:
        return None
    return lambda path, epoch: start_background_reports(cfg, epoch)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t2ilab report", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run's output_dir (its checkpoints and metrics.jsonl)")
    p.add_argument("--milestones", default="all", help="'all' (default) or epochs, e.g. 50,100")
    p.add_argument("--notebooks", help=f"comma-separated, from: {', '.join(NOTEBOOKS)} (default: reports.notebooks)")
    p.add_argument("--reports-dir", help="default: reports.reports_dir of the run config (reports/)")
    p.add_argument("--notebooks-dir", help=f"where the report notebooks are (default {NOTEBOOKS_DIR})")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="NAME=VALUE",
                   help="a notebook parameter, e.g. --set n_per_category=20 or --set quality_review.quick=true")
    p.add_argument("--force", action="store_true", help="rerun reports that are up to date")
    p.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds per notebook cell before it fails")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run `t2ilab report`; 0 when all reports are ok or up to date, 1 when any failed, 2 for bad input."""
    args = build_parser().parse_args(argv)
    try:
        params: dict[str, Any] = {}
        for text in args.params:
            path, value = parse_override(text)
            if len(path) == 2 and path[0] in NOTEBOOKS:
                params.setdefault(path[0], {})[path[1]] = value
            elif len(path) == 1 and path[0] not in NOTEBOOKS:
                params[path[0]] = value
            else:
                raise ReportError(f"--set {text!r}: expected NAME=VALUE or NOTEBOOK.NAME=VALUE")
        notebooks = [n.strip() for n in args.notebooks.split(",") if n.strip()] if args.notebooks else None
        results = run_reports(args.run, args.milestones, notebooks, args.reports_dir, args.force, params,
                              args.timeout, args.notebooks_dir)
    except (ReportError, ConfigError, CheckpointError) as exc:
        print(f"t2ilab report: error: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in results if r.status == "failed"]
    print(f"{len(results) - len(failed)} report(s) ok or up to date, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
