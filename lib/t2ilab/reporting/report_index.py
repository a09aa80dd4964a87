"""A run's report index: index.md, index.html and quality_vs_epoch.png, one row per milestone with losses, judge
scores, the best sampler and links to its reports; the measured version of the old guide's epochs-vs-quality table.
"""

from __future__ import annotations

import html
from pathlib import Path

from t2ilab import readable
from t2ilab.config import CATEGORIES
from t2ilab.files import read_json, write_atomically, write_text
from t2ilab.reporting.report_notebook import epoch_folder
from t2ilab.review import metric_curves, skill_report
from t2ilab.review.judge import SKILLS
from t2ilab.training.checkpoint import read_manifest

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
        from t2ilab.training.metrics_log import MetricsError, read_metrics

        try:
            _, val = read_metrics(run_dir)
            rows = val[val["epoch"] == epoch]
            if len(rows):
                metrics = {k: rows.iloc[-1][k] for k in ("train_loss", "val_loss", "val_loss_ema")}
        except MetricsError:
            pass
    return {k: (float(v) if v is not None and v == v else None) for k, v in metrics.items()}


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
        review = quality.get("metrics") if quality and quality.get("status") == "ok" else None
        rows.append({"epoch": epoch, "step": step, "folder": folder.name, "reports": reports,
                     **_losses(run_dir, checkpoint, epoch), **skill_report.quality_summary(review),
                     "reviewed": review is not None, "metrics": metric_curves.metric_summary(review)})
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


SKILLS_NOTE = ("Skills, each judged on its own on the captions that claim it: score [95% CI]. A skill rose or fell "
               "only when the 95 % interval of its change since the previous milestone excludes zero.")
NO_SKILLS = "No skill scores yet: they come from the quality review (shapes data), which has not run for this run."
NO_SKILLS_FOLDER = ("No skill scores: the exact judge reads the shapes data set only. This run's quality reviews "
                    "(folder data) measure the distances and standard metrics in the table above.")
METRICS_NOTE = ("CLIP score: prompt-image agreement (higher is better); FID and KID: distance of generated from real "
                "held-out images in Inception (or your extractor's) features, lower is better; in-domain KID: the same "
                "in the features of an autoencoder trained on this data set (0..16 scale). n: images measured (CLIP score: "
                "generated images; FID and KID: real images compared).")


def skill_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the skills table: per milestone each skill's score and the sentence on what changed."""
    judged = [r for r in rows if r.get("skills")]
    seen = {name for r in judged for name in r["skills"]}
    names = [s for s in SKILLS if s in seen] + sorted(seen - set(SKILLS))
    head = ["epoch", *names, "what changed"]
    table, previous = [], None
    for r in judged:
        cells = [str(r["epoch"])]
        for name in names:
            skill = r["skills"].get(name) or {}
            cells.append(readable.score(skill.get("accuracy"), skill.get("ci_low"), skill.get("ci_high")))
        if previous is None:
            cells.append("first milestone with skill scores")
        else:
            changes = skill_report.skill_changes(r["skills"], previous["skills"])
            cells.append(skill_report.change_sentence(changes, previous["epoch"]))
        table.append(cells)
        previous = r
    return head, table


def write_index(run_reports_dir: Path, run_dir: Path, milestones: dict[int, Path]) -> Path:
    """Write index.md, index.html and quality_vs_epoch.png for a run; returns the index.html path."""
    rows = collect_rows(run_reports_dir, run_dir, milestones)
    plot = plot_quality_vs_epoch(rows, run_reports_dir / INDEX_PLOT)
    metrics_plot = metric_curves.plot_metrics_vs_epoch(rows, run_reports_dir / metric_curves.METRICS_PLOT, PLOT_DPI)
    cats = _categories(rows)
    measured = metric_curves.columns(rows)
    head = ["epoch", "step", "train loss", "val loss", "val loss (EMA)", *cats, "overall [95% CI]", "best sampler",
            *[metric_curves.COLUMNS[k][0] for k in measured], "reports"]
    table = []
    for r in rows:
        cells = [_fmt(r["epoch"]), _fmt(r["step"]), readable.number(r.get("train_loss"), 4),
                 readable.number(r.get("val_loss"), 4), readable.number(r.get("val_loss_ema"), 4),
                 *[readable.number(r["categories"].get(c)) for c in cats],
                 readable.score(r["overall"], r["overall_low"], r["overall_high"], 3), _fmt(r["best"]),
                 *[metric_curves.cell(r["metrics"].get(k)) for k in measured]]
        links = [(name, f"{r['folder']}/{name}.ipynb", f"{r['folder']}/{name}.html", _status(rec))
                 for name, rec in sorted(r["reports"].items())]
        table.append((cells, links))
    skills = skill_rows(rows)
    no_skills = NO_SKILLS_FOLDER if any(r["reviewed"] for r in rows) and not skills[1] else NO_SKILLS
    extras = {"metrics_plot": metrics_plot, "metrics_note": METRICS_NOTE if measured else None, "no_skills": no_skills}
    title = f"Reports for {run_dir.name}"
    write_text(run_reports_dir / "index.md", _markdown(title, run_dir, head, table, plot, skills, **extras))
    index = run_reports_dir / "index.html"
    write_text(index, _html(title, run_dir, head, table, plot, skills, **extras))
    return index


def _md(text: str) -> str:
    """Escaped for a Markdown table cell: HTML special characters and pipes."""
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, run_dir: Path, head: list[str], table: list, plot: Path | None,
              skills: tuple[list[str], list[list[str]]], metrics_plot: Path | None = None, metrics_note: str | None = None,
              no_skills: str = NO_SKILLS) -> str:
    lines = [f"# {_md(title)}", "", f"Run: `{_md(run_dir)}`. One row per milestone checkpoint; judge scores are the "
             "share of images the exact judge accepts. Generated by `t2ilab report`; do not edit.", ""]
    if plot is not None:
        lines += [f"![skills, overall judge score and validation loss per epoch]({plot.name})", ""]
    if metrics_plot is not None:
        lines += [f"![CLIP score, FID and KID per epoch]({metrics_plot.name})", ""]
    if metrics_note:
        lines += [_md(metrics_note), ""]
    lines += ["| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
    for cells, links in table:
        reports = "<br>".join(f"{_md(name)}: [ipynb]({_md(nb)}) [html]({_md(page)}) {_md(status)}"
                              for name, nb, page, status in links) or "–"
        lines.append("| " + " | ".join(_md(c) for c in cells) + f" | {reports} |")
    skill_head, skill_table = skills
    lines += ["", "## Skills, each judged on its own", ""]
    if skill_table:
        lines += [SKILLS_NOTE, "", "| " + " | ".join(_md(h) for h in skill_head) + " |", "|" + "---|" * len(skill_head)]
        lines += ["| " + " | ".join(_md(c) for c in cells) + " |" for cells in skill_table]
    else:
        lines.append(no_skills)
    return "\n".join(lines) + "\n"


def _html(title: str, run_dir: Path, head: list[str], table: list, plot: Path | None,
          skills: tuple[list[str], list[list[str]]], metrics_plot: Path | None = None, metrics_note: str | None = None,
          no_skills: str = NO_SKILLS) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}"
           "td.reports,td.text{text-align:left;white-space:normal}"
           ".failed{color:#b00020;font-weight:bold}</style></head><body>",
           f"<h1>{e(title)}</h1>", f"<p>Run: <code>{e(str(run_dir))}</code>. One row per milestone checkpoint; judge "
           "scores are the share of images the exact judge accepts. Generated by <code>t2ilab report</code>.</p>"]
    if plot is not None:
        out.append(f'<p><img src="{e(plot.name)}" alt="skills, overall judge score and validation loss per epoch"></p>')
    if metrics_plot is not None:
        out.append(f'<p><img src="{e(metrics_plot.name)}" alt="CLIP score, FID and KID per epoch"></p>')
    if metrics_note:
        out.append(f"<p>{e(metrics_note)}</p>")
    out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>")
    for cells, links in table:
        reports = "<br>".join(
            f'{e(name)}: <a href="{e(nb, quote=True)}">ipynb</a> <a href="{e(page, quote=True)}">html</a> '
            f'<span class="{"ok" if status == "ok" else "failed"}">{e(status)}</span>'
            for name, nb, page, status in links)
        row = "".join(f"<td>{e(c)}</td>" for c in cells)
        out.append(f'<tr>{row}<td class="reports">{reports or "–"}</td></tr>')
    out.append("</tbody></table>")
    skill_head, skill_table = skills
    out.append("<h2>Skills, each judged on its own</h2>")
    if skill_table:
        out.append(f"<p>{e(SKILLS_NOTE)}</p><table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in skill_head)
                   + "</tr></thead><tbody>")
        for cells in skill_table:
            out.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells[:-1]) + f'<td class="text">{e(cells[-1])}</td></tr>')
        out.append("</tbody></table>")
    else:
        out.append(f"<p>{e(no_skills)}</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _padded(lows: list[float], highs: list[float], pad: float = 0.04, min_span: float = 0.15) -> tuple[float, float]:
    """A y range fitted to the data (with its intervals) inside [0, 1], so a change of a few points is visible."""
    low, high = max(0.0, min(lows) - pad), min(1.0, max(highs) + pad)
    if high - low < min_span:
        centre = (low + high) / 2
        low, high = max(0.0, centre - min_span / 2), min(1.0, centre + min_span / 2)
    return low, high


def plot_quality_vs_epoch(rows: list[dict], path: Path) -> Path | None:
    """Skills and the strict overall score (95 % bands, axes fitted to the data) and validation loss against epoch."""
    import seaborn as sns
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    scored = [r for r in rows if r["overall"] is not None]
    skilled = [r for r in rows if r.get("skills")]
    losses = [r for r in rows if r.get("val_loss") is not None]
    if not scored and not losses and not skilled:
        path.unlink(missing_ok=True)
        return None
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(14, 3.8), dpi=PLOT_DPI, layout="constrained")  # no pyplot: safe in any process
        skills_ax, overall_ax, loss_ax = fig.subplots(1, 3, sharex=True)
    _plot_skills(skills_ax, skilled, sns.color_palette("colorblind"), reviewed=any(r.get("reviewed") for r in rows))
    _plot_overall(overall_ax, scored, sns.color_palette()[0], reviewed=any(r.get("reviewed") for r in rows))
    if losses:
        sns.lineplot(x=[r["epoch"] for r in losses], y=[r["val_loss"] for r in losses], marker="o", ax=loss_ax,
                     label="val_loss")
        ema = [r for r in losses if r.get("val_loss_ema") is not None]
        if ema:
            sns.lineplot(x=[r["epoch"] for r in ema], y=[r["val_loss_ema"] for r in ema], marker="o", ax=loss_ax,
                         label="val_loss_ema")
    loss_ax.set(title="validation loss", xlabel="epoch", ylabel="")
    for ax in (skills_ax, overall_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not 2.25
    write_atomically(path, lambda f: fig.savefig(f, format="png"))
    return path


def _plot_skills(ax, rows: list[dict], palette, reviewed: bool = False) -> None:
    ax.set(title="skills, each judged on its own (95% band)", xlabel="epoch", ylabel="share of claims met")
    if not rows:
        message = "no skill scores: the judge reads\nshapes data only" if reviewed else "no skill scores yet"
        ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
        return
    names = [s for s in SKILLS if any(s in r["skills"] for r in rows)]
    lows, highs = [], []
    for colour, name in zip(palette, names):
        points = [(r["epoch"], r["skills"][name]) for r in rows if name in r["skills"]]
        x = [e for e, _ in points]
        y, low, high = ([float(p[k]) for _, p in points] for k in ("accuracy", "ci_low", "ci_high"))
        ax.plot(x, y, marker="o", color=colour, label=name)
        ax.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
        lows += low
        highs += high
    ax.set_ylim(*_padded(lows, highs))
    ax.legend(fontsize="small", loc="best", ncol=2)


def _plot_overall(ax, rows: list[dict], colour, reviewed: bool = False) -> None:
    ax.set(title="strict overall judge score (95% band)", xlabel="epoch", ylabel="share of images judged correct")
    if not rows:
        # A review that ran on folder data has no judge scores; its numbers are in metrics_vs_epoch.png.
        message = "no judge scores: folder data\n(see the CLIP / FID / KID curves)" if reviewed else "no quality review yet"
        ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
        return
    x = [r["epoch"] for r in rows]
    y = [r["overall"] for r in rows]
    low = [r["overall_low"] if r["overall_low"] is not None else r["overall"] for r in rows]
    high = [r["overall_high"] if r["overall_high"] is not None else r["overall"] for r in rows]
    ax.plot(x, y, marker="o", color=colour, label="EMA weights, default sampler")
    ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)
    bottom, top = _padded(low, high)
    ceilings = [r["ceiling"] for r in rows if r["ceiling"] is not None]
    if ceilings:
        ceiling = max(ceilings)
        if ceiling <= top:
            ax.axhline(ceiling, ls="--", color="grey", label=f"judge on real images ({ceiling:.2f})")
        else:  # drawing it would squash the curve against the bottom of the axis
            ax.plot([], [], ls="--", color="grey", label=f"judge on real images: {ceiling:.2f} (above the axis)")
    ax.set_ylim(bottom, top)
    ax.legend(fontsize="small", loc="best")
