"""Shared by the benchmarks: waiting for a quiet CPU, interleaved A/B rounds, tables and machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
# The recipe configs/demo.yaml had before the lever study chose flow matching + CoordConv + frozen MiniLM:
# v-prediction + Min-SNR-5, a scratch text encoder, DPM-Solver++. The lever study's baseline, and the recipe the
# throughput benchmark trains (its reference loop, transcribed from diffusers' script, knows neither flow
# matching nor CoordConv), so both keep measuring what they measured.
BASELINE_RECIPE = ["noise.objective=diffusion", "noise.prediction_type=v_prediction", "training.snr_gamma=5.0",
                   "sampling.scheduler=dpmsolver++", "model.coord_channels=false", "model.text_encoder=scratch"]


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float = 1.5, timeout_s: float = 600, poll_s: float = 30) -> float:
    """Poll until the 1-minute load average is below `max_load` (at most `timeout_s`); returns the last reading."""
    start = time.monotonic()
    load = load_average()
    while load >= max_load and time.monotonic() - start < timeout_s:
        print(f"  load average {load:.2f} >= {max_load}; waiting {poll_s:.0f} s for a quieter CPU ...", flush=True)
        time.sleep(poll_s)
        load = load_average()
    if load >= max_load:
        print(f"  WARNING: load average still {load:.2f} after {timeout_s:.0f} s; measuring anyway", flush=True)
    return load


def device_sync() -> None:
    """Wait for queued GPU work so a timer around it measures it (nothing to wait for on a CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_rounds(runners: dict[str, Callable[[int], int]], rounds: int, steps: int, warmup: int,
                       log: Callable[[str], None] = print) -> tuple[dict[str, list[float]], list[float]]:
    """Items per second of each runner, round by round, and the load average after each round.

    A runner takes a number of steps and returns how many items (samples, images) it processed. The order
    alternates every round (A B C, C B A, ...) so a slow drift of the machine hits every runner alike; each
    runner gets `warmup` untimed steps right before its timed block in every round."""
    names = list(runners)
    rates: dict[str, list[float]] = {n: [] for n in names}
    loads = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if warmup:
                runners[name](warmup)
            device_sync()
            t0 = time.perf_counter()
            items = runners[name](steps)
            device_sync()
            rates[name].append(items / (time.perf_counter() - t0))
        loads.append(load_average())
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:.1f}/s" for n in names) + f" (load {loads[-1]:.2f})")
    return rates, loads


def epoch_seconds(run: Path) -> dict[int, float]:
    """Logged training seconds per epoch of a run (t2ilab.review.diagnose.read_metrics: resumed stretches deduplicated)."""
    from t2ilab.review.diagnose import read_metrics

    _, val = read_metrics(run)
    return {int(e): float(s) for e, s in zip(val["epoch"], val["epoch_seconds"])}


def median(values: list[float]) -> float:
    return statistics.median(values)


def format_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table (it reads fine in a terminal too)."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda items: "| " + " | ".join(s.rjust(w) for s, w in zip(items, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def omp_note() -> str:
    """' (OMP_WAIT_POLICY=PASSIVE)' when an OpenMP setting that changes timings is in the environment, else ''."""
    found = [f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS") if k in os.environ]
    return f" ({', '.join(found)})" if found else ""


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict[str, str]:
    """CPU model, cores, bf16 support, torch version and threads, for the results file."""
    import torch

    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags = cpu_flags()
    bf16 = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return {"cpu": model, "cores": str(os.cpu_count()), "bf16 instructions": ", ".join(bf16) or "none",
            "python": sys.version.split()[0], "torch": torch.__version__, "torch threads (default)": str(torch.get_num_threads()),
            "OpenMP environment": ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ) or "not set"}
