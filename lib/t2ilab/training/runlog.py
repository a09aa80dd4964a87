"""What a run leaves behind while it trains: train.log lines, metrics.jsonl records, a progress display, a lock."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".t2ilab.lock"


class RunLockedError(RuntimeError):
    """Another live process is training into the same output dir."""


def format_train_line(epoch: int, step: int, loss: float, lr: float, grad_norm: float, samples_per_s: float) -> str:
    """One human-readable line; `grep -E "Loss:|loss:" train.log` finds it (as the old guide did)."""
    return (
        f"epoch {epoch} step {step} loss: {loss:.4f} lr: {lr:.1e} grad_norm: {grad_norm:.2f} "
        f"samples/s: {samples_per_s:.0f}"
    )


def format_val_line(rec: dict) -> str:
    ema = rec.get("val_loss_ema")
    ema_text = f" val_loss_ema: {ema:.4f}" if ema is not None else ""
    return (
        f"epoch {rec['epoch']} step {rec['step']} train_loss: {rec['train_loss']:.4f} val_loss: {rec['val_loss']:.4f}"
        f"{ema_text} epoch_seconds: {rec['epoch_seconds']:.1f}"
    )


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def progress_mode(requested: str = "auto") -> str:
    """'bar' in a terminal or an interactive notebook; 'plain' lines under papermill, CI or a pipe."""
    if requested != "auto":
        return requested
    if os.environ.get("T2ILAB_HEADLESS") or os.environ.get("CI"):
        return "plain"
    if "ipykernel" in sys.modules:
        return "notebook"
    return "bar" if sys.stderr.isatty() else "plain"


class RunLog:
    """Appends to <output_dir>/train.log and metrics.jsonl and drives the progress display (main process only)."""

    def __init__(self, output_dir: Path, total_steps: int, initial_step: int, enabled: bool, progress: str = "auto"):
        self.enabled = enabled
        self.mode = progress_mode(progress) if enabled else "none"
        self.log_path = output_dir / "train.log"
        self.metrics_path = output_dir / "metrics.jsonl"
        self.bar = None
        self.repaired = repair_tail(self.metrics_path) if enabled else None
        if self.mode in ("bar", "notebook"):
            if self.mode == "notebook":
                from tqdm.auto import tqdm
            else:
                from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def info(self, text: str) -> None:
        """A line for train.log and the console."""
        if not self.enabled:
            return
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(stamped + "\n")
        if self.bar is not None:
            self.bar.write(text)
        elif self.mode == "plain":
            print(text, flush=True)

    def record(self, rec: dict) -> None:
        if not self.enabled:
            return
        clean = {k: ([_json_safe(x) for x in v] if isinstance(v, list) else _json_safe(v)) for k, v in rec.items()}
        append_line(self.metrics_path, json.dumps(clean))

    def advance(self, steps: int, epoch: int, loss: float | None) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            if loss is not None:
                self.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def append_line(path: Path, line: str) -> None:
    """Append one whole line or nothing: a failed or short write (a full disk) is cut back off the file."""
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, f"short write to {path} ({written} of {len(data)} bytes)")
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def repair_tail(path: Path) -> str | None:
    """Cut a partial last line (a run stopped mid-write) off a JSON-lines file; returns the fragment removed."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as fh:
        fh.truncate(keep)
    return data[keep:].decode("utf-8", "replace")


def acquire_lock(output_dir: Path) -> Path:
    """Create the run lock atomically; a lock left by a dead process is taken over."""
    path = output_dir / LOCK_NAME
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _read_lock(path)
            if holder and holder.get("host") == socket.gethostname() and _alive(holder.get("pid", -1)):
                raise RunLockedError(
                    f"output_dir {output_dir} is in use by process {holder['pid']} (lock file {path}). Wait for "
                    f"that run, stop it, or choose another output_dir; if no run is active, delete the lock file."
                ) from None
            path.unlink(missing_ok=True)  # stale: its process is gone (e.g. killed)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, fh)
        return path
    raise RunLockedError(f"could not take the run lock {path}")


def release_lock(path: Path) -> None:
    holder = _read_lock(path)
    if holder and holder.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
