"""Loss diagnosis: read a run's metrics.jsonl, decide whether it is still improving, and say what to do next.

`python -m t2ilab.diagnose outputs/run [--plot loss.png]` prints the verdict, its evidence and the ETA.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from t2ilab.plots import plot_training  # noqa: F401  (re-exported: notebooks call diagnose.plot_training)

METRICS_FILE = "metrics.jsonl"
VERDICTS = ("still_improving", "plateau", "unstable", "overfitting", "too_early")
MIN_VAL_POINTS = 4  # fewer validation epochs than this: "too_early"
CI_LEVEL = 0.95  # two-sided t-interval of the OLS slope
AUTOCORR_MAX = 0.5  # cap on the residual autocorrelation used to widen the CI (see _slope)
AUTOCORR_MIN_POINTS = 6  # fewer points: too few pairs to estimate it, plain OLS
MIN_REL_SLOPE = 5e-4  # |val slope| / val loss per epoch below this is flat in practice (< 0.5 % over 10 epochs)
DIVERGING_REL_SLOPE = 0.01  # validation rising ≥ 1 %/epoch with training rising too: "unstable" (sharply, not drift)
SPIKE_WINDOW = 25  # a training-loss point is compared with the median and MAD of the points before it
SPIKE_MAD_K = 6.0  # spike: above median + K * 1.4826 * MAD (1.4826 * MAD estimates sigma; 6 sigma is rare noise)
SPIKE_MIN_RATIO = 1.25  # ... and at least 25 % above that median, so wiggles in a near-noiseless loss don't count
SPIKE_MIN_COUNT = 3  # this many spikes within the last K epochs: "unstable"
LR_LOW_FRACTION = 0.1  # current LR below this share of the run's peak: already decayed, lowering it won't help
SAMPLER_MIN_GAP = 0.1  # best-sampler score minus default-sampler score that counts as a sampler problem ...
SAMPLER_MIN_HEADROOM_SHARE = 0.5  # ... when the best setting also closes at least half the gap to the ceiling
QUALITY_GOOD_SHARE = 0.9  # default-sampler score at least this share of the ceiling: images are good already
ETA_WINDOW = 10  # recent epochs whose median duration the ETA uses

TRAIN_COLUMNS = ["epoch", "step", "loss", "lr", "grad_norm", "samples_per_s", "time", "loss_bins"]
VAL_COLUMNS = ["epoch", "step", "val_loss", "val_loss_ema", "val_loss_bins", "val_loss_ema_bins", "train_loss",
               "epoch_seconds", "samples_per_s", "num_epochs", "lr", "time"]


class MetricsError(ValueError):
    """metrics.jsonl is missing, empty or unreadable; the message names the path."""


@dataclass
class Diagnosis:
    """A verdict on a run, the numbers behind it, and what to do next."""

    verdict: str  # one of VERDICTS
    evidence: dict[str, Any]  # slopes, CIs, spike and NaN counts, quality numbers
    recommendation: str  # one sentence in the old guide's terms
    summary: str  # one readable line
    eta: dict[str, Any] = field(default_factory=dict)  # see eta()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: numpy scalars become Python numbers, NaN/inf become None."""
        return _jsonable(asdict(self))


def read_metrics(path_or_output_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) frames from metrics.jsonl; resumed stretches replace what they re-log, broken lines are skipped."""
    path = Path(path_or_output_dir)
    path = path / METRICS_FILE if path.is_dir() else path
    if not path.is_file():
        raise MetricsError(f"no metrics log at {path}: pass a run's output_dir (training writes {METRICS_FILE} there)")
    streams: dict[str, list[dict]] = {"train": [], "val": []}
    skipped = resumes = superseded_nonfinite = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:  # json accepts the NaN/Infinity tokens Python writes; a crash can leave a partial last line
                record = json.loads(line)
                kind, key = record["type"], (int(record["epoch"]), int(record["step"]))
            except (ValueError, KeyError, TypeError):
                skipped += 1
                continue
            if kind not in streams:
                continue
            if streams[kind] and key <= streams[kind][-1]["_key"]:
                # A resumed run re-logs from its checkpoint: everything the earlier attempt logged from this
                # (epoch, step) on is superseded, including epochs the new attempt has not reached yet.
                resumes += 1
                for name, stream in streams.items():
                    superseded_nonfinite += sum(not _finite_record(r) for r in stream if r["_key"] >= key)
                    streams[name] = [r for r in stream if r["_key"] < key]
            record["_key"] = key
            streams[kind].append(record)
    if not streams["train"] and not streams["val"]:
        raise MetricsError(f"{path} holds no train or val records ({skipped} unreadable lines): is the run started?")
    train = _frame(streams["train"], TRAIN_COLUMNS, ["epoch", "step"])
    val = _frame(streams["val"], VAL_COLUMNS, ["epoch"])
    for df in (train, val):
        df.attrs.update(path=str(path), skipped_lines=skipped, resumes=resumes,
                        superseded_nonfinite=superseded_nonfinite)
    return train, val


def _finite_record(record: dict) -> bool:
    values = [record.get(k) for k in ("loss", "val_loss")]
    return all(not isinstance(v, float) or math.isfinite(v) for v in values)


def _frame(records: list[dict], columns: list[str], key: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(records).drop(columns=["_key", "type"], errors="ignore")
    for col in columns:
        if col not in df:
            df[col] = None  # an older or newer trainer may not log every field
        elif not col.endswith("_bins"):
            df[col] = pd.to_numeric(df[col], errors="coerce")  # null -> NaN
    df = df[columns + [c for c in df.columns if c not in columns]]
    df = df.astype({c: "float64" for c in columns if not c.endswith("_bins")} | {"epoch": "int64", "step": "int64"})
    return df.drop_duplicates(subset=key, keep="last").sort_values(key).reset_index(drop=True)


def _slope(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """OLS slope of y per epoch with its t-interval, and the slope relative to the mean level."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok].astype(float), y[ok].astype(float)
    n = len(x)
    if n < 3 or np.ptp(x) == 0:
        return {"slope": math.nan, "ci_low": math.nan, "ci_high": math.nan, "rel_slope": math.nan, "rho": math.nan}
    fit = stats.linregress(x, y)
    # Consecutive epochs are correlated (EMA weights, slow drift), so plain OLS claims trends too often. Santer
    # et al. 2000 (doi:10.1029/1999JD901105): lag-1 autocorrelation r of the residuals gives n_eff = n(1-r)/(1+r);
    # the standard error grows by sqrt((n-2)/(n_eff-2)) and t uses n_eff-2 dof. r is capped at AUTOCORR_MAX
    # because a smooth curved decay also has correlated residuals, and that is signal, not noise.
    resid = y - (fit.intercept + fit.slope * x)
    rho = float(np.corrcoef(resid[:-1], resid[1:])[0, 1]) if n >= AUTOCORR_MIN_POINTS and np.ptp(resid) > 0 else 0.0
    rho = min(max(rho, 0.0), AUTOCORR_MAX) if math.isfinite(rho) else 0.0
    n_eff = n * (1 - rho) / (1 + rho)
    half = (stats.t.ppf(0.5 + CI_LEVEL / 2, n_eff - 2) * fit.stderr * math.sqrt((n - 2) / (n_eff - 2))
            if n_eff > 2 else math.inf)
    level = abs(float(np.mean(y)))
    return {"slope": fit.slope, "ci_low": fit.slope - half, "ci_high": fit.slope + half,
            "rel_slope": fit.slope / level if level > 0 else math.nan, "rho": rho}


def _direction(s: dict[str, float], min_rel: float = 0.0) -> str:
    """"down"/"up" when the CI excludes zero and the relative slope is at least min_rel, else "flat"."""
    if s["ci_high"] < 0 and s["rel_slope"] <= -min_rel:
        return "down"
    if s["ci_low"] > 0 and s["rel_slope"] >= min_rel:
        return "up"
    return "flat"


def count_spikes(loss: np.ndarray) -> np.ndarray:
    """Boolean mask of points above median + SPIKE_MAD_K·σ_MAD (and SPIKE_MIN_RATIO·median) of the points before."""
    loss = np.asarray(loss, dtype=float)
    spikes = np.zeros(len(loss), dtype=bool)
    for i in range(SPIKE_WINDOW // 2, len(loss)):
        before = loss[max(0, i - SPIKE_WINDOW):i]
        before = before[np.isfinite(before)]
        if len(before) < SPIKE_WINDOW // 2 or not np.isfinite(loss[i]):
            continue
        median = np.median(before)
        sigma = 1.4826 * np.median(np.abs(before - median))  # MAD → σ for Gaussian noise, robust to the spikes
        spikes[i] = loss[i] > median + SPIKE_MAD_K * sigma and loss[i] > SPIKE_MIN_RATIO * median
    return spikes


def diagnose(train: pd.DataFrame, val: pd.DataFrame, last_k: int = 10, quality: dict | None = None,
             target_epochs: int | None = None) -> Diagnosis:
    """Verdict on the last K = min(last_k, max(MIN_VAL_POINTS, half the run)) validation epochs; rules checked in
    this order, first match wins.

    1. unstable: a NaN/inf training or validation loss anywhere in the (deduplicated) log, or at least
       SPIKE_MIN_COUNT training-loss spikes (count_spikes) within the last K epochs.
    2. too_early: fewer than MIN_VAL_POINTS validation epochs.
    3. Slopes per epoch over the last K epochs by OLS with a CI_LEVEL t-interval: validation loss
       (val_loss_ema when logged for all K, else val_loss) and training loss (train_loss per epoch).
       The CI is widened for autocorrelated epochs (see _slope). Validation counts as rising/falling when
       its CI excludes zero and |slope| / loss ≥ MIN_REL_SLOPE; training when its CI excludes zero.
       overfitting: validation rising while training falls or stays flat;
       unstable: validation rising by ≥ DIVERGING_REL_SLOPE per epoch and training rising too (diverging);
       still_improving: validation falling (recommend continuing to num_epochs, or 50 % further, with an ETA);
       plateau: otherwise, a mild joint rise included (recommend half the learning rate, unless the LR has already decayed below
       LR_LOW_FRACTION of its peak or `quality` says the images are good or the sampler is the problem).
    `quality` ({"overall", "best_sampler_overall", "ceiling"}) marks a sampler problem when the best sampler
    beats the default by ≥ SAMPLER_MIN_GAP and closes ≥ SAMPLER_MIN_HEADROOM_SHARE of the gap to the ceiling.
    """
    if last_k < 3:
        raise ValueError(f"last_k must be at least 3 (a slope with a confidence interval needs 3 points), got {last_k}")
    # At most the recent half of the run: a line through the fast early decay has large, autocorrelated
    # residuals, which widens the CI until a loss that falls every epoch reads as a plateau.
    window = min(last_k, max(MIN_VAL_POINTS, len(val) // 2))
    ev = _evidence(train, val, val.tail(window))
    timing = eta(train, val, target_epochs)
    verdict, reason = _verdict(ev, len(val))
    ev.update(_quality_evidence(quality))
    recommendation = _recommend(verdict, reason, ev, timing, train, val)
    return Diagnosis(verdict, ev, recommendation, _summary(verdict, reason, ev), timing)


def _evidence(train: pd.DataFrame, val: pd.DataFrame, window: pd.DataFrame) -> dict[str, Any]:
    """The numbers the verdict rests on, all from the validation window (the last K epochs) unless named."""
    ema_logged = len(window) > 0 and bool(np.isfinite(window["val_loss_ema"]).all())
    series = "val_loss_ema" if ema_logged else "val_loss"
    epochs = window["epoch"].to_numpy(dtype=float)
    first_epoch = epochs[0] if len(epochs) else 0
    in_window = train[train["epoch"] >= first_epoch]
    train_loss = window["train_loss"].to_numpy(dtype=float)
    if len(train_loss) == 0 or not np.isfinite(train_loss).all():  # no per-epoch train_loss: average the log points
        train_loss = in_window.groupby("epoch")["loss"].mean().reindex(window["epoch"]).to_numpy(dtype=float)
    val_fit, train_fit = _slope(epochs, window[series].to_numpy(dtype=float)), _slope(epochs, train_loss)
    spikes = count_spikes(train["loss"].to_numpy(dtype=float))[train["epoch"].to_numpy() >= first_epoch]
    bad_epochs = pd.concat([train.loc[~np.isfinite(train["loss"]), "epoch"],
                            val.loc[~np.isfinite(val["val_loss"]), "epoch"]])
    finite = val[np.isfinite(val[series])]
    best = finite.loc[finite[series].idxmin()] if len(finite) else None
    lr = _last_finite(train, "lr") or _last_finite(val, "lr")
    return {
        "epochs_done": int(val["epoch"].max()) if len(val) else 0, "window_epochs": len(window),
        "val_series": series, "val_loss_last": window[series].iloc[-1] if len(window) else None,
        "val_loss_best": best[series] if best is not None else None,
        "best_epoch": int(best["epoch"]) if best is not None else None,
        **{f"val_{k}": v for k, v in val_fit.items()}, "val_direction": _direction(val_fit, MIN_REL_SLOPE),
        **{f"train_{k}": v for k, v in train_fit.items()}, "train_direction": _direction(train_fit),
        "ci_level": CI_LEVEL, "spikes": int(spikes.sum()),
        "nan_seen": len(bad_epochs) > 0, "nan_count": len(bad_epochs),
        "first_nan_epoch": int(bad_epochs.min()) if len(bad_epochs) else None,
        "nan_rolled_back": train.attrs.get("superseded_nonfinite", 0), "resumes": train.attrs.get("resumes", 0),
        "grad_norm_median": in_window["grad_norm"].median(), "grad_norm_max": in_window["grad_norm"].max(),
        "lr": lr, "peak_lr": float(train["lr"].max()) if train["lr"].notna().any() else lr,
    }


def _last_finite(df: pd.DataFrame, col: str) -> float | None:
    values = df[col].dropna() if col in df else []
    return float(values.iloc[-1]) if len(values) else None


def _verdict(ev: dict, n_val: int) -> tuple[str, str]:
    if ev["nan_seen"]:
        return "unstable", "nan"
    if ev["spikes"] >= SPIKE_MIN_COUNT:
        return "unstable", "spikes"
    if n_val < MIN_VAL_POINTS:
        return "too_early", "few_points"
    if ev["val_direction"] == "up":
        if ev["train_direction"] != "up":
            return "overfitting", "gap"
        if ev["val_rel_slope"] >= DIVERGING_REL_SLOPE:
            return "unstable", "diverging"
    return ("still_improving", "falling") if ev["val_direction"] == "down" else ("plateau", "flat")


def _quality_evidence(quality: dict | None) -> dict[str, Any]:
    if not quality or quality.get("overall") is None:
        return {}
    overall, ceiling = float(quality["overall"]), float(quality.get("ceiling") or 1.0)
    best = quality.get("best_sampler_overall")
    gap = float(best) - overall if best is not None else None
    headroom = ceiling - overall
    return {"quality_overall": overall, "quality_ceiling": ceiling, "quality_best_sampler": best, "sampler_gap": gap,
            "sampler_problem": gap is not None and gap >= SAMPLER_MIN_GAP
            and (headroom <= 0 or gap / headroom >= SAMPLER_MIN_HEADROOM_SHARE),
            "quality_good": overall >= QUALITY_GOOD_SHARE * ceiling}


def _recommend(verdict: str, reason: str, ev: dict, timing: dict, train: pd.DataFrame, val: pd.DataFrame) -> str:
    lower = (f"a lower learning rate, e.g. {_fmt_lr(ev['lr'] / 2)} (half of {_fmt_lr(ev['lr'])})"
             if ev["lr"] else "a lower learning rate (half the current one)")
    sampler = (f"the sampler settings are the problem: see the sampler sweep (default sampler scores "
               f"{ev['quality_overall']:.2f}, the best setting {ev['quality_best_sampler']:.2f}, "
               f"real images {ev['quality_ceiling']:.2f})") if ev.get("sampler_problem") else ""
    if verdict == "unstable" and reason == "nan":
        return (f"resume from the last checkpoint before epoch {ev['first_nan_epoch']} with {lower}; keep gradient "
                "clipping on (training.max_grad_norm) and prefer bf16 to fp16: "
                f"--resume latest --set training.learning_rate={_fmt_lr(ev['lr'] / 2) if ev['lr'] else '<half>'}")
    if verdict == "unstable":
        what = (f"{ev['spikes']} training-loss spikes in the last {ev['window_epochs']} epochs" if reason == "spikes"
                else "training and validation loss both rising")
        return f"resume from the latest checkpoint with {lower} and gradient clipping (training.max_grad_norm): {what}"
    if verdict == "too_early":
        return (f"continue training: a verdict needs at least {MIN_VAL_POINTS} validation epochs "
                f"(have {ev['epochs_done']}); {timing['text']}")
    if verdict == "overfitting":
        return (f"add data or regularise (augmentation, more caption dropout, weight decay); meanwhile use the "
                f"checkpoint nearest epoch {ev['best_epoch']}, where {ev['val_series']} was lowest "
                f"({ev['val_loss_best']:.4g})")
    if verdict == "still_improving":
        target = timing.get("target_epochs")
        if target is None or ev["epochs_done"] >= target:  # past the configured end and still falling: go 50 % further
            target = math.ceil(ev["epochs_done"] * 1.5 / 10) * 10
            timing = eta(train, val, target)
        text = f"continue training to {target} epochs: {timing['text']}"
        return text + (f"; also {sampler}" if sampler else "")
    if sampler:
        return f"the model is fine; {sampler}"
    if ev.get("quality_good"):
        return (f"stop here: the loss has plateaued and images score {ev['quality_overall']:.2f} of a "
                f"{ev['quality_ceiling']:.2f} ceiling; to go further add data or grow the model")
    if ev["lr"] and ev["peak_lr"] and ev["lr"] < LR_LOW_FRACTION * ev["peak_lr"]:
        return (f"the loss has converged at an already decayed learning rate ({_fmt_lr(ev['lr'])}, peak "
                f"{_fmt_lr(ev['peak_lr'])}): more epochs or a lower learning rate won't help; add data or grow the model")
    return f"resume from the latest checkpoint with {lower}: the validation loss has stopped falling"


TREND_WORDS = {"down": "falling", "up": "rising", "flat": "no clear trend: its CI includes zero"}


def _summary(verdict: str, reason: str, ev: dict) -> str:
    if reason == "nan":
        return f"unstable: non-finite loss in {ev['nan_count']} log points, first at epoch {ev['first_nan_epoch']}"
    if reason == "spikes":
        return f"unstable: {ev['spikes']} training-loss spikes in the last {ev['window_epochs']} epochs"
    if reason == "few_points":
        return f"too_early: {ev['epochs_done']} validation epochs, a verdict needs {MIN_VAL_POINTS}"
    pct = 100 * ev["val_rel_slope"]
    return (f"{verdict}: {ev['val_series']} {pct:+.2f} %/epoch over the last {ev['window_epochs']} epochs (slope "
            f"{ev['val_slope']:.2e}, {CI_LEVEL:.0%} CI [{ev['val_ci_low']:.2e}, {ev['val_ci_high']:.2e}]); "
            f"training loss {100 * ev['train_rel_slope']:+.2f} %/epoch ({TREND_WORDS[ev['train_direction']]})")


def eta(train: pd.DataFrame, val: pd.DataFrame, target_epochs: int | None = None) -> dict[str, Any]:
    """Epochs and seconds left to target_epochs (default: num_epochs from the log) at the measured epoch time."""
    done = int(val["epoch"].max()) if len(val) else 0
    target = target_epochs or (int(_last_finite(val, "num_epochs")) if _last_finite(val, "num_epochs") else None)
    recent = val.tail(ETA_WINDOW)
    seconds = recent["epoch_seconds"].to_numpy(dtype=float) if "epoch_seconds" in recent else np.array([])
    seconds, source = seconds[np.isfinite(seconds) & (seconds > 0)], "epoch_seconds"
    if len(seconds) == 0 and "time" in recent:  # no per-epoch timing: fall back to wall-clock time between epochs
        seconds, source = np.diff(recent["time"].to_numpy(dtype=float)), "wall_clock"
        seconds = seconds[np.isfinite(seconds) & (seconds > 0)]
    per_epoch = float(np.median(seconds)) if len(seconds) else None  # median: a resume gap or slow epoch doesn't skew
    left = max(target - done, 0) if target else None
    out = {"epochs_done": done, "target_epochs": target, "epochs_left": left, "seconds_per_epoch": per_epoch,
           "seconds_left": left * per_epoch if left is not None and per_epoch else None,
           "measured_epochs": len(seconds), "source": source if len(seconds) else None}
    if target is None:
        out["text"] = f"{done} epochs done; no target (num_epochs) in the log"
    elif left == 0:
        out["text"] = f"target of {target} epochs reached ({done} done)"
    elif per_epoch is None:
        out["text"] = f"{left} epochs left (no epoch timing in the log yet)"
    else:
        rate = f"{per_epoch:.0f}" if per_epoch >= 10 else f"{per_epoch:.1f}"
        out["text"] = (f"{left} epochs left ≈ {format_duration(out['seconds_left'])} at {rate} s/epoch "
                       f"(measured over the last {len(seconds)} epochs)")
    return out


def format_duration(seconds: float) -> str:
    """820 -> '13 min 40 s', 5002 -> '1 h 23 min', 190000 -> '2 d 4 h'."""
    s = int(round(seconds))
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def _fmt_lr(lr: float) -> str:
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"  # 5e-5, not 5e-05


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    return x


def diagnose_run(output_dir: str | Path, target_epochs: int | None = None, quality: dict | None = None) -> dict:
    """Read, diagnose and time a run; a JSON-safe dict for a metrics.json sidecar."""
    train, val = read_metrics(output_dir)
    out = diagnose(train, val, quality=quality, target_epochs=target_epochs).to_dict()
    out["log"] = _jsonable({k: train.attrs.get(k) for k in ("path", "skipped_lines", "resumes")}
                           | {"train_points": len(train), "val_points": len(val)})
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m t2ilab.diagnose <output_dir> [--plot out.png] [--target-epochs N] [--last-k K] [--json]`."""
    parser = argparse.ArgumentParser(prog="python -m t2ilab.diagnose", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="a run's output_dir, or its metrics.jsonl")
    parser.add_argument("--plot", help="also save the training figure here (PNG)")
    parser.add_argument("--target-epochs", type=int, help="ETA target (default: num_epochs from the log)")
    parser.add_argument("--last-k", type=int, default=10, help="validation epochs the slopes are fitted on")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        train, val = read_metrics(args.output_dir)
    except MetricsError as err:
        print(f"t2ilab.diagnose: {err}", file=sys.stderr)
        return 2
    result = diagnose(train, val, last_k=args.last_k, target_epochs=args.target_epochs)
    if args.plot:
        plot_training(train, val, args.plot)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"verdict: {result.verdict}\n{result.summary}\nrecommendation: {result.recommendation}")
    print(f"eta: {result.eta['text']}\nevidence:")
    for key, value in result.to_dict()["evidence"].items():
        print(f"  {key:<22} {f'{value:.4g}' if isinstance(value, float) else value}")
    if train.attrs.get("skipped_lines"):
        print(f"({train.attrs['skipped_lines']} unreadable lines in {train.attrs['path']} were skipped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
