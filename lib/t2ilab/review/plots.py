"""Training-run figures from metrics.jsonl frames: losses, loss per timestep bin, learning rate, gradient norm.

No backend is forced: pyplot picks the notebook's inline backend, or Agg on a headless machine.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

DPI = 80  # small enough for a report page: 12 x 6.4 in -> 960 x 512 px
SMOOTHING = 0.9  # weight of the exponential moving average over the raw training curves (TensorBoard-style)


def smooth(values: np.ndarray | pd.Series, weight: float = SMOOTHING) -> np.ndarray:
    """Bias-corrected exponential moving average (TensorBoard's smoothing); NaN/inf points are skipped."""
    series = pd.Series(np.asarray(values, dtype=float)).replace([np.inf, -np.inf], np.nan)
    return series.ewm(alpha=1 - weight, adjust=True, ignore_na=True).mean().to_numpy()


def plot_training(train: pd.DataFrame, val: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Six panels: training loss, validation loss, loss per timestep bin, learning rate, gradient norm, throughput."""
    with sns.axes_style("whitegrid"):  # a style context, so a notebook's global theme is left alone
        # Created through pyplot so a notebook's backend registers its display hook, closed at once so pyplot
        # keeps no reference (no leak in loops) and the notebook shows the returned figure once, not twice.
        fig = plt.figure(figsize=(12, 6.4), dpi=DPI, layout="constrained")
        plt.close(fig)
        axes = fig.subplots(2, 3)
    x, xlabel = _train_x(train, val)
    _raw_and_smoothed(axes[0, 0], x, train["loss"], "training loss", xlabel, log=True)
    for bad_x in x[~np.isfinite(train["loss"].to_numpy(dtype=float))]:
        axes[0, 0].axvline(bad_x, color="crimson", lw=1, alpha=0.6)  # NaN/inf steps: invisible otherwise
    _validation(axes[0, 1], val)
    _timestep_bins(axes[0, 2], train, val)
    _raw_and_smoothed(axes[1, 0], x, train["lr"], "learning rate", xlabel, smoothed=False)
    _raw_and_smoothed(axes[1, 1], x, train["grad_norm"], "gradient norm", xlabel, log=True)
    _raw_and_smoothed(axes[1, 2], x, train["samples_per_s"], "samples / s", xlabel)
    if path is not None:
        fig.savefig(path)
    return fig


def _train_x(train: pd.DataFrame, val: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Training steps in epochs (step / steps per epoch from the validation log), so all panels share one axis."""
    steps = train["step"].to_numpy(dtype=float)
    if len(val) >= 1 and (val["step"] > 0).all():
        steps_per_epoch = float(np.median(val["step"] / val["epoch"]))
        return steps / steps_per_epoch, "epoch"
    return steps, "step"


def _empty(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not logged yet", ha="center", va="center", transform=ax.transAxes, color="grey")


def _raw_and_smoothed(ax, x: np.ndarray, y: pd.Series, title: str, xlabel: str, log: bool = False,
                      smoothed: bool = True) -> None:
    values = y.to_numpy(dtype=float)
    finite = np.isfinite(values)
    if not finite.any():
        return _empty(ax, title)
    sns.lineplot(x=x[finite], y=values[finite], ax=ax, alpha=0.25 if smoothed else 1.0, estimator=None,
                 label="raw" if smoothed else None)
    if smoothed:
        sns.lineplot(x=x, y=smooth(values), ax=ax, estimator=None, label=f"EMA {SMOOTHING}")
        ax.legend(fontsize="small")
    if log and (values[finite] > 0).all():
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel="")


def _validation(ax, val: pd.DataFrame) -> None:
    columns = [c for c in ("val_loss", "val_loss_ema", "train_loss") if c in val and np.isfinite(val[c]).any()]
    if not columns:
        return _empty(ax, "validation loss")
    long = val.melt(id_vars="epoch", value_vars=columns, var_name="series", value_name="loss")
    long["loss"] = long["loss"].replace([np.inf, -np.inf], np.nan)
    sns.lineplot(data=long, x="epoch", y="loss", hue="series", style="series", ax=ax, estimator=None, marker=".")
    main = "val_loss_ema" if "val_loss_ema" in columns else columns[0]
    best = val.loc[val[main].replace([np.inf, -np.inf], np.nan).idxmin()]
    ax.scatter([best["epoch"]], [best[main]], color="black", zorder=5, label=f"best {main} (epoch {best['epoch']:.0f})")
    ax.legend(fontsize="small")
    ax.set(title="validation loss per epoch", ylabel="")


def bin_table(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """Loss per timestep bin (columns) per epoch (rows): validation bins, else training bins averaged per epoch."""
    for df, column in ((val, "val_loss_bins"), (train, "loss_bins")):
        rows = [r for r in df[column] if isinstance(r, list)] if column in df else []
        if not rows:
            continue
        width = max(len(r) for r in rows)
        matrix = [[np.nan if v is None else float(v) for v in r] + [np.nan] * (width - len(r))
                  if isinstance(r, list) else [np.nan] * width for r in df[column]]
        labels = [f"{100 * i // width}–{100 * (i + 1) // width}%" for i in range(width)]  # share of T
        table = pd.DataFrame(matrix, columns=labels, index=df["epoch"].to_numpy())
        return table.groupby(level=0).mean()
    return pd.DataFrame()


def _timestep_bins(ax, train: pd.DataFrame, val: pd.DataFrame) -> None:
    table = bin_table(train, val).replace([np.inf, -np.inf], np.nan)
    if table.empty or not np.isfinite(table.to_numpy()).any():
        return _empty(ax, "loss per timestep bin")
    # Each bin relative to its first logged value: the bins differ by orders of magnitude, progress is comparable.
    ratio = table / table.bfill().iloc[0]
    with warnings.catch_warnings():  # seaborn 0.13 calls Colormap.set_bad, which matplotlib 3.11 deprecates
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        sns.heatmap(ratio.T, ax=ax, cmap="vlag", center=1.0, xticklabels="auto", yticklabels=True,
                    cbar_kws={"label": "loss / first epoch"})
    ax.set(title="loss per timestep bin (share of T)", xlabel="epoch", ylabel="")
