"""A run's report index: index.md, index.html and quality_vs_epoch.png, one row per milestone with losses, judge
scores, the best sampler and links to its reports; the measured version of the old guide's epochs-vs-quality table.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from t2ilab.checkpoint import read_manifest
from t2ilab.config import CATEGORIES
from t2ilab.report_notebook import epoch_folder, read_json, write_text

PLOT_DPI = 80
INDEX_PLOT = "quality_vs_epoch.png"


def _losses(run_dir: Path, checkpoint: Path | None, epoch: int) -> dict:
    """train/val loss of an epoch: the checkpoint manifest's metrics, else the val record in metrics.jsonl."""
    metrics = {}
    if checkpoint is not None:
        try:
            metrics = dict(read_manifest(checkpoint).get("metrics") or {})
        except ValueError:
            metrics = {}
    if not metrics.get("val_loss") and (run_dir / "metrics.jsonl").is_file():
        from t2ilab.diagnose import MetricsError, read_metrics

        try:
            _, val = read_metrics(run_dir)
            rows = val[val["epoch"] == epoch]
            if len(rows):
                metrics = {k: rows.iloc[-1][k] for k in ("train_loss", "val_loss", "val_loss_ema")}
        except MetricsError:
            pass
    return {k: (float(v) if v is not None and v == v else None) for k, v in metrics.items()}


def quality_summary(metrics: dict | None) -> dict:
    """Overall judge score with its 95% CI, score per category and the best sampler setting of a quality review."""
    out = {"overall": None, "overall_low": None, "overall_high": None, "ceiling": None, "categories": {}, "best": None}
    if not metrics:
        return out
    ci = metrics.get("overall_ci") or [None, None]
    out.update(overall=metrics.get("overall"), overall_low=ci[0], overall_high=ci[1], ceiling=metrics.get("ceiling"))
    out["categories"] = {row["category"]: row.get("accuracy") for row in metrics.get("scores") or []
                         if isinstance(row, dict) and row.get("category") not in (None, "overall")}
    best = (metrics.get("best_settings") or {}).get("best")
    if isinstance(best, dict):
        out["best"] = (f"{best.get('scheduler')}, {best.get('steps')} steps, guidance {best.get('guidance')}: "
                       f"{best.get('accuracy', 0):.2f}")
    return out


def collect_rows(run_reports_dir: Path, run_dir: Path, milestones: dict[int, Path]) -> list[dict]:
    """One row per milestone (present checkpoints and epoch folders with reports), oldest first."""
    epochs = set(milestones)
    for folder in run_reports_dir.glob("epoch-*"):
        if folder.is_dir() and folder.name[6:].isdigit() and any(folder.glob("*.metrics.json")):
            epochs.add(int(folder.name[6:]))
    rows = []
    for epoch in sorted(epochs):
        folder = epoch_folder(run_reports_dir, epoch)
        reports = {}
        for sidecar in sorted(folder.glob("*.metrics.json")):
            record = read_json(sidecar)
            if record:
                reports[record.get("notebook", sidecar.name.split(".")[0])] = record
        checkpoint = milestones.get(epoch)
        step = None
        if checkpoint is not None:
            try:
                step = read_manifest(checkpoint).get("global_step")
            except ValueError:
                pass
        step = step if step is not None else next((r.get("global_step") for r in reports.values()), None)
        quality = reports.get("quality_review")
        rows.append({"epoch": epoch, "step": step, "folder": folder.name, "reports": reports,
                     **_losses(run_dir, checkpoint, epoch),
                     **quality_summary(quality.get("metrics") if quality and quality.get("status") == "ok" else None)})
    return rows


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _status(record: dict) -> str:
    return "ok" if record.get("status") == "ok" else f"FAILED: {record.get('error') or 'unknown error'}"


def _categories(rows: list[dict]) -> list[str]:
    seen = {c for r in rows for c in r["categories"]}
    return [c for c in CATEGORIES if c in seen] + sorted(seen - set(CATEGORIES))


def write_index(run_reports_dir: Path, run_dir: Path, milestones: dict[int, Path]) -> Path:
    """Write index.md, index.html and quality_vs_epoch.png for a run; returns the index.html path."""
    rows = collect_rows(run_reports_dir, run_dir, milestones)
    plot = plot_quality_vs_epoch(rows, run_reports_dir / INDEX_PLOT)
    cats = _categories(rows)
    head = ["epoch", "step", "train loss", "val loss", "val loss (EMA)", *cats, "overall (95% CI)", "best sampler",
            "reports"]
    table = []
    for r in rows:
        ci = f" [{_fmt(r['overall_low'], 2)}, {_fmt(r['overall_high'], 2)}]" if r["overall_low"] is not None else ""
        cells = [_fmt(r["epoch"]), _fmt(r["step"]), _fmt(r.get("train_loss")), _fmt(r.get("val_loss")),
                 _fmt(r.get("val_loss_ema")),
                 *[_fmt(r["categories"].get(c), 2) for c in cats], _fmt(r["overall"], 3) + ci, _fmt(r["best"])]
        links = [(name, f"{r['folder']}/{name}.ipynb", f"{r['folder']}/{name}.html", _status(rec))
                 for name, rec in sorted(r["reports"].items())]
        table.append((cells, links))
    title = f"Reports for {run_dir.name}"
    write_text(run_reports_dir / "index.md", _markdown(title, run_dir, head, table, plot))
    index = run_reports_dir / "index.html"
    write_text(index, _html(title, run_dir, head, table, plot))
    return index


def _md(text: str) -> str:
    """Escaped for a Markdown table cell: HTML special characters and pipes."""
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, run_dir: Path, head: list[str], table: list, plot: Path | None) -> str:
    lines = [f"# {_md(title)}", "", f"Run: `{_md(run_dir)}`. One row per milestone checkpoint; judge scores are the "
             "share of images the exact judge accepts. Generated by `t2ilab report`; do not edit.", ""]
    if plot is not None:
        lines += [f"![overall judge score and validation loss per epoch]({plot.name})", ""]
    lines += ["| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
    for cells, links in table:
        reports = "<br>".join(f"{_md(name)}: [ipynb]({_md(nb)}) [html]({_md(page)}) {_md(status)}"
                              for name, nb, page, status in links) or "–"
        lines.append("| " + " | ".join(_md(c) for c in cells) + f" | {reports} |")
    return "\n".join(lines) + "\n"


def _html(title: str, run_dir: Path, head: list[str], table: list, plot: Path | None) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td.reports{text-align:left}"
           ".failed{color:#b00020;font-weight:bold}</style></head><body>",
           f"<h1>{e(title)}</h1>", f"<p>Run: <code>{e(str(run_dir))}</code>. One row per milestone checkpoint; judge "
           "scores are the share of images the exact judge accepts. Generated by <code>t2ilab report</code>.</p>"]
    if plot is not None:
        out.append(f'<p><img src="{e(plot.name)}" alt="overall judge score and validation loss per epoch"></p>')
    out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>")
    for cells, links in table:
        reports = "<br>".join(
            f'{e(name)}: <a href="{e(nb, quote=True)}">ipynb</a> <a href="{e(page, quote=True)}">html</a> '
            f'<span class="{"ok" if status == "ok" else "failed"}">{e(status)}</span>'
            for name, nb, page, status in links)
        row = "".join(f"<td>{e(c)}</td>" for c in cells)
        out.append(f'<tr>{row}<td class="reports">{reports or "–"}</td></tr>')
    out.append("</tbody></table></body></html>")
    return "\n".join(out) + "\n"


def plot_quality_vs_epoch(rows: list[dict], path: Path) -> Path | None:
    """Overall judge score (95% CI error bars) and validation loss against epoch, side by side; None without data."""
    import seaborn as sns
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    scored = [r for r in rows if r["overall"] is not None]
    losses = [r for r in rows if r.get("val_loss") is not None]
    if not scored and not losses:
        path.unlink(missing_ok=True)
        return None
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(10, 3.6), dpi=PLOT_DPI, layout="constrained")  # no pyplot: safe in any process
        left, right = fig.subplots(1, 2, sharex=True)
    if scored:
        x = [r["epoch"] for r in scored]
        y = [r["overall"] for r in scored]
        low = [r["overall"] - r["overall_low"] if r["overall_low"] is not None else 0 for r in scored]
        high = [r["overall_high"] - r["overall"] if r["overall_high"] is not None else 0 for r in scored]
        left.errorbar(x, y, yerr=[low, high], marker="o", capsize=4, color=sns.color_palette()[0],
                      label="EMA weights, default sampler")
        ceilings = [r["ceiling"] for r in scored if r["ceiling"] is not None]
        if ceilings:
            left.axhline(max(ceilings), ls="--", color="grey", label="judge on real images (ceiling)")
        left.set_ylim(0, 1.05)
        left.legend(fontsize="small", loc="best")
    else:
        left.text(0.5, 0.5, "no quality review yet", ha="center", va="center", transform=left.transAxes, color="grey")
    left.set(title="overall judge score (95% CI)", xlabel="epoch", ylabel="share of images judged correct")
    if losses:
        sns.lineplot(x=[r["epoch"] for r in losses], y=[r["val_loss"] for r in losses], marker="o", ax=right,
                     label="val_loss")
        ema = [r for r in losses if r.get("val_loss_ema") is not None]
        if ema:
            sns.lineplot(x=[r["epoch"] for r in ema], y=[r["val_loss_ema"] for r in ema], marker="o", ax=right,
                         label="val_loss_ema")
    right.set(title="validation loss", xlabel="epoch", ylabel="")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not 2.25
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


