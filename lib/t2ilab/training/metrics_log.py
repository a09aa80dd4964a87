"""A run's metrics.jsonl as two frames: per-step training records and per-epoch validation records, with the
stretches a resumed run re-logged replaced by the last attempt."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

METRICS_FILE = "metrics.jsonl"
TRAIN_COLUMNS = ["epoch", "step", "loss", "lr", "grad_norm", "samples_per_s", "time", "loss_bins"]
VAL_COLUMNS = ["epoch", "step", "val_loss", "val_loss_ema", "val_loss_bins", "val_loss_ema_bins", "train_loss",
               "epoch_seconds", "samples_per_s", "num_epochs", "lr", "time"]


class MetricsError(ValueError):
    """metrics.jsonl is missing, empty or unreadable; the message names the path."""


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
