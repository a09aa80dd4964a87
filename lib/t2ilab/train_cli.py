"""`t2ilab train` / `./run_train.sh`: arguments, the run's config, the process-count check, exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from t2ilab.config import Config, ConfigError, load_config
from t2ilab.paths import caller_overrides, caller_path
from t2ilab.training.checkpoint import CheckpointError, padded
from t2ilab.training.runlog import RunLockedError
from t2ilab.training.train import TrainingDiverged, train


def launcher_processes() -> int | None:
    """--num_processes of an `accelerate launch` that started this process, read from the parent's command line."""
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if not any(a.endswith("accelerate") for a in argv[:2]) or "launch" not in argv:
        return None
    for i, a in enumerate(argv):
        for flag in ("--num_processes", "--num-processes"):
            if a == flag and i + 1 < len(argv) and argv[i + 1].isdigit():
                return int(argv[i + 1])
            if a.startswith(flag + "=") and a.split("=", 1)[1].isdigit():
                return int(a.split("=", 1)[1])
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t2ilab train", description="Train or resume a text-to-image diffusion model.")
    p.add_argument("--config", help="YAML config (default: the checkpoint's config when resuming, else the defaults)")
    p.add_argument("--resume", help="checkpoint folder, or 'latest' for the newest complete one in output_dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.learning_rate=5e-5 (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard what the run would overwrite in output_dir (an old run's checkpoints and logs, or the "
                        "checkpoints after the one resumed); refused without it")
    p.add_argument("--max-steps", type=int, help="stop after this global step (saves a mid-epoch checkpoint)")
    p.add_argument("--stop-at-epoch", type=int, help="stop after this epoch (as the old run stopped at 118 of 200)")
    p.add_argument("--progress", choices=["auto", "bar", "plain", "none"], default="auto")
    p.add_argument("--reports", action="store_true", help="start milestone reports in the background (reports.on_milestone)")
    return p


def config_for(config: str | None, resume: str | None, overrides: list[str]) -> Config:
    """The config of a run: the file given, else (when resuming a folder) the checkpoint's own config."""
    if config is None and resume and resume != "latest":
        ckpt_cfg = padded(Path(resume)) / "config.yaml"
        if ckpt_cfg.is_file():
            return load_config(ckpt_cfg, overrides)
    return load_config(config, overrides)


def _check_process_count() -> None:
    """Two processes asked must mean two: refuse a launcher that silently started one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    asked = int(os.environ.get("T2ILAB_NUM_PROCESSES", "0") or 0) or launcher_processes() or 1
    if asked > 1 and world == 1:
        raise ConfigError(
            f"{asked} processes were asked for but this is the only one (accelerate launch without --multi_gpu "
            f"starts one process on a machine without GPUs). Add --multi_gpu (it runs on CPUs too), e.g. "
            f"accelerate launch --multi_gpu --num_processes {asked} -m t2ilab train ..., or use "
            f"T2ILAB_NUM_PROCESSES={asked} ./run_train.sh ..."
        )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (("--max-steps", args.max_steps), ("--stop-at-epoch", args.stop_at_epoch)):
        if value is not None and not 1 <= value <= 10**9:
            print(f"error: {flag} must be from 1 to 1000000000, got {value} (omit it to train the whole run)", file=sys.stderr)
            return 2
    args.config, args.resume = caller_path(args.config), caller_path(args.resume)
    args.overrides = caller_overrides(args.overrides)
    try:
        _check_process_count()
        cfg = config_for(args.config, args.resume, args.overrides)
        on_milestone = None
        if args.reports or cfg.reports.on_milestone:
            from t2ilab.reporting.reports import start_background_reports
            on_milestone = lambda path, epoch: start_background_reports(cfg, epoch)  # noqa: E731
        result = train(cfg, resume=args.resume, max_steps=args.max_steps, stop_at_epoch=args.stop_at_epoch,
                       progress=args.progress, on_milestone=on_milestone, overwrite=args.overwrite)
    except (ConfigError, CheckpointError, RunLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:  # data errors (DataError) and similar input problems
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # output_dir read-only, deleted mid-run, disk full while logging
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: cannot write the run{where}: {exc.strerror or exc}. Checkpoints already written are intact; "
              f"fix the folder (or choose another output_dir) and continue with --resume latest.", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{result.stopped}: epoch {result.epoch}, step {result.global_step}; last checkpoint: {result.last_checkpoint}")
    return 130 if result.stopped == "signal" else 0
