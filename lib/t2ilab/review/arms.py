"""The guide's advice, tested by experiment: one checkpoint branches into arms (continue, lower LR, more epochs, a
warm restart, more data), each resumed exactly into `<out>/arms/<arm>/`, trained the same extra epochs and judged
with the same prompts and seeds; every verdict against `continue` comes from Newcombe's interval (t2ilab.intervals).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from t2ilab.config import SEED_MAX, Config, ConfigError, load_config
from t2ilab.training.checkpoint import (
    CheckpointError,
    checkpoint_folders,
    checkpoint_name,
    load_training_state,
    read_manifest,
    resolve_checkpoint,
)

ARMS = ("continue", "lower_lr", "more_epochs", "restart", "more_data")
BASELINE = "continue"
RESULTS_FILE = "arms.json"
VERDICTS = ("better", "worse", "not distinguishable at this N")


class ArmsError(ValueError):
    """An arms run cannot go on as asked; the message says why and what to do."""


@dataclass
class Source:
    """The checkpoint every arm starts from: its folder, config, position and learning rate in effect."""

    checkpoint: Path
    cfg: Config
    epoch: int
    global_step: int
    current_lr: float


@dataclass
class ArmPlan:
    """One arm: its overrides of the source config, what it changes in words, where it trains, where it stops."""

    name: str
    overrides: list[str]
    change: str
    output_dir: Path
    target_epoch: int
    notes: list[str] = field(default_factory=list)


def read_source(checkpoint: str | Path) -> Source:
    """The source checkpoint, read without writing anything into it."""
    path = resolve_checkpoint(checkpoint)
    manifest = read_manifest(path)
    optimizer, _, _, state = load_training_state(path)
    if state.get("step_in_epoch", 0):
        raise ArmsError(f"{path} was saved mid-epoch; arms start from an epoch boundary (checkpoint-epoch-N without -step-)")
    cfg = load_config(path / "config.yaml")
    if cfg.data.source != "shapes":
        raise ArmsError(f"{path} was trained on data.source={cfg.data.source!r}; the arms are judged by the shapes judge, "
                        f"which reads the shapes data set only")
    return Source(path, cfg, int(manifest["epoch"]), int(manifest["global_step"]), float(optimizer["param_groups"][0]["lr"]))


def _arm_changes(arm: str, source: Source, target: int, restart_peak: float | None) -> tuple[list[str], str, list[str]]:
    """(overrides, change in words, notes) of one arm; every arm gets a num_epochs that reaches `target`."""
    t = source.cfg.training
    fit = max(t.num_epochs, target)
    notes = []
    if fit > t.num_epochs and arm in ("continue", "lower_lr", "more_data"):
        notes.append(f"training.num_epochs raised {t.num_epochs} -> {fit} to fit the extra epochs: the schedule is stretched "
                     f"over them, not kept as it is")
    if arm == "continue":
        return [f"training.num_epochs={fit}"], "the schedule as it is", notes
    if arm == "lower_lr":
        lr = source.current_lr / 2
        if lr <= 0:
            lr = t.learning_rate / 2
            notes.append("the learning rate at the checkpoint is 0 (the schedule has ended): half the peak instead")
        return ([f"training.learning_rate={lr!r}", f"training.num_epochs={fit}"],
                f"lr {source.current_lr:.1e} -> {lr:.1e} (half), same shape", notes)
    if arm == "more_epochs":
        longer = max(math.ceil(t.num_epochs * 1.5), target)
        return [f"training.num_epochs={longer}"], f"num_epochs {t.num_epochs} -> {longer}: schedule stretched", notes
    if arm == "restart":
        peak = restart_peak if restart_peak is not None else t.learning_rate / 2
        if t.lr_restart == peak:
            raise ArmsError(f"{source.checkpoint} already restarted at training.lr_restart={peak}; pass another --restart-peak")
        return ([f"training.lr_restart={peak!r}", "training.lr_scheduler=cosine", f"training.num_epochs={target}"],
                f"new cosine from {peak:.1e} over the extra epochs", [])
    if arm == "more_data":
        n = source.cfg.data.num_samples
        return ([f"data.num_samples={2 * n}", f"training.num_epochs={fit}"],
                f"num_samples {n} -> {2 * n} (2x steps per epoch)", notes)
    raise ArmsError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")


def plan_arms(source: Source, arms: list[str], epochs: int, out: str | Path, restart_peak: float | None = None,
              overrides: list[str] | None = None) -> list[ArmPlan]:
    """One plan per arm, each into `<out>/arms/<arm>/`, all stopping `epochs` after the source checkpoint."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms or len(set(arms)) != len(arms):
        raise ArmsError(f"--arms {','.join(arms)}: give each of {', '.join(ARMS)} at most once (unknown: {unknown or 'none'})")
    if not 1 <= epochs <= 100_000:
        raise ArmsError(f"--epochs must be from 1 to 100000, got {epochs}")
    if restart_peak is not None and not 0 < restart_peak <= 1:
        raise ArmsError(f"--restart-peak is a learning rate above 0 and at most 1, got {restart_peak}")
    root = Path(out).resolve() / "arms"  # absolute, so rebasing a notebook's relative paths leaves it alone
    if source.checkpoint.resolve() in (root.resolve(), *root.resolve().parents):
        raise ArmsError(f"--out {out} would write inside the source checkpoint {source.checkpoint}; choose another folder")
    target = source.epoch + epochs
    plans = []
    for arm in arms:
        changes, change, notes = _arm_changes(arm, source, target, restart_peak)
        arm_dir = root / arm
        plans.append(ArmPlan(arm, changes + list(overrides or []) + [f"output_dir={arm_dir}"], change, arm_dir, target, notes))
    return plans


def arm_config(plan: ArmPlan, source: Source, root: str | Path | None = None) -> Config:
    """The source checkpoint's config with the arm's overrides (relative paths taken from `root` when given)."""
    cfg = load_config(source.checkpoint / "config.yaml", plan.overrides)
    if root is not None:
        from t2ilab.config import rebase_paths

        cfg = rebase_paths(cfg, root)
    return cfg


def same_run(checkpoint: Path, cfg: Config) -> bool:
    """Was `checkpoint` trained with `cfg`, up to where its files live (output_dir, data.cache_dir, written as given)?"""
    def settings(c: Config) -> dict:
        d = c.to_dict()
        d.pop("output_dir")
        d["data"].pop("cache_dir")
        return d

    try:
        return settings(load_config(checkpoint / "config.yaml")) == settings(cfg)
    except ConfigError:
        return False


def finished_checkpoint(plan: ArmPlan, cfg: Config) -> Path | None:
    """The arm's final checkpoint when an earlier run wrote it with this very config; None when it must train."""
    final = plan.output_dir / checkpoint_name(plan.target_epoch)
    try:
        manifest = read_manifest(final)
    except CheckpointError:
        return None
    return final if manifest.get("end_of_epoch") and same_run(final, cfg) else None


def start_checkpoint(plan: ArmPlan, cfg: Config, source: Source) -> Path:
    """Where the arm resumes: the source, or the newest checkpoint of an interrupted earlier attempt of this arm."""
    if not checkpoint_folders(plan.output_dir):
        return source.checkpoint
    latest = resolve_checkpoint("latest", plan.output_dir)  # a damaged newest one is named here, never skipped
    manifest = read_manifest(latest)
    if not same_run(latest, cfg) or manifest.get("epoch", 0) >= plan.target_epoch:
        raise ArmsError(
            f"{plan.output_dir} holds another run ({latest.name}, trained with other settings or past epoch "
            f"{plan.target_epoch}); move it away or choose another --out"
        )
    return latest


def _named(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu() for name, p in module.named_parameters()}


def _same(tensors: dict[str, torch.Tensor], folder: Path) -> bool:
    saved = {}
    for file in sorted(folder.glob("*.safetensors")):
        saved.update(load_file(file))
    return bool(tensors) and all(name in saved and torch.equal(t, saved[name]) for name, t in tensors.items())


def starts_exactly(trainer, checkpoint: Path) -> dict[str, bool]:
    """Before the first step: are the trainer's weights, EMA and optimizer moments the checkpoint's, bit for bit?"""
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    checks = {"unet": _same(_named(unet), checkpoint / "unet")}
    if trainer.ema is not None and (checkpoint / "unet_ema").is_dir():
        names = [name for name, _ in unet.named_parameters()]
        checks["unet_ema"] = _same(dict(zip(names, (p.detach().cpu() for p in trainer.ema.shadow_params))), checkpoint / "unet_ema")
    if trainer.text_trainable:
        checks["text_encoder"] = _same(_named(trainer.accelerator.unwrap_model(trainer.text_encoder)), checkpoint / "text_encoder")
    saved = load_training_state(checkpoint)[0]["state"]
    now = trainer.optimizer.state_dict()["state"]
    checks["optimizer"] = saved.keys() == now.keys() and all(
        torch.equal(torch.as_tensor(now[i][k]).cpu(), torch.as_tensor(v)) for i in saved for k, v in saved[i].items())
    return checks


def _learning_rates(output_dir: Path, after_step: int) -> tuple[float | None, float | None]:
    """(first, last) learning rate the arm logged after the source step, from its metrics.jsonl."""
    from t2ilab.review.diagnose import read_metrics

    try:
        train, _ = read_metrics(output_dir)
    except ValueError:
        return None, None
    lrs = train[train["step"] > after_step]["lr"] if len(train) else []
    return (float(lrs.iloc[0]), float(lrs.iloc[-1])) if len(lrs) else (None, None)


def train_arm(plan: ArmPlan, cfg: Config, source: Source, progress: str = "auto") -> dict:
    """Train one arm to its target epoch (or find it already trained); returns what arms.json records of it."""
    from t2ilab.training.runlog import release_lock
    from t2ilab.training.train import Trainer

    record = {"arm": plan.name, "change": plan.change, "overrides": plan.overrides, "notes": list(plan.notes),
              "output_dir": str(plan.output_dir), "source_epoch": source.epoch, "epochs": plan.target_epoch - source.epoch}
    final = finished_checkpoint(plan, cfg)
    start = time.perf_counter()
    if final is None:
        begin = start_checkpoint(plan, cfg, source)
        trainer = Trainer(cfg, resume=str(begin), progress=progress)
        try:
            checks = starts_exactly(trainer, begin)
        except BaseException:
            if trainer.lock:
                release_lock(trainer.lock)  # fit() releases it otherwise
            raise
        record.update(started_from=str(begin), starts_exactly=checks, resume_plan=trainer.plan.render() if trainer.plan else None)
        if not all(checks.values()):
            record["notes"].append(f"did NOT start from exactly {begin}: {', '.join(k for k, v in checks.items() if not v)} differ")
        result = trainer.fit(stop_at_epoch=plan.target_epoch)
        if result.epoch != plan.target_epoch or result.last_checkpoint is None:
            raise ArmsError(f"arm {plan.name} stopped ({result.stopped}) at epoch {result.epoch}, not {plan.target_epoch}; "
                            f"run the same command again to continue it")
        final, status = result.last_checkpoint, "trained"
    else:
        status = "already trained (not retrained)"
    manifest = read_manifest(final)
    lr_first, lr_last = _learning_rates(plan.output_dir, source.global_step)
    record.update(status=status, checkpoint=str(final), checkpoint_written_at=manifest.get("written_at"),
                  steps=int(manifest["global_step"]) - source.global_step, lr_first=lr_first, lr_last=lr_last,
                  train_minutes=(time.perf_counter() - start) / 60)
    return record


def judge_checkpoint(checkpoint: str | Path, sampling: dict, n_per_category: int, seed: int, batch_size: int = 64) -> dict:
    """Strict overall and skills of one checkpoint, with the hit counts that Newcombe's interval needs."""
    from t2ilab.review.quality import score_checkpoint

    start = time.perf_counter()
    scores = score_checkpoint(checkpoint, n_per_category, seed=seed, batch_size=batch_size, ceiling_n=n_per_category, **sampling)
    by_category = scores.set_index("category")
    overall = by_category.loc["overall"]
    categories = by_category.drop(index="overall")
    hits = int(sum(round(r["accuracy"] * r["n"]) for _, r in categories.iterrows()))
    skills = [dict(s, hits=int(round(s["accuracy"] * s["n"]))) for s in scores.attrs["skills"]]
    return {"overall": {"accuracy": float(overall["accuracy"]), "ci_low": float(overall["ci_low"]),
                        "ci_high": float(overall["ci_high"]), "hits": hits, "n": int(overall["n"])},
            "skills": skills, "categories": scores.drop(columns=["ceiling", "ceiling_n"]).to_dict(orient="records"),
            "judge_minutes": (time.perf_counter() - start) / 60}


def compare(judged: dict, baseline: dict) -> dict:
    """Overall and each skill against the baseline arm: difference, Newcombe 95 % interval, better / worse / neither."""
    from t2ilab.intervals import change_word, difference_interval

    def versus(a: dict, b: dict) -> dict:
        diff, low, high = difference_interval(a["hits"], a["n"], b["hits"], b["n"])
        return {"difference": diff, "ci_low": low, "ci_high": high, "verdict": change_word(low, high, *VERDICTS)}

    base_skills = {s["skill"]: s for s in baseline["skills"]}
    return {"overall": versus(judged["overall"], baseline["overall"]),
            "skills": {s["skill"]: versus(s, base_skills[s["skill"]]) for s in judged["skills"]
                       if s["skill"] in base_skills and s["n"] and base_skills[s["skill"]]["n"]}}


def _earlier_judgement(previous: dict, name: str, record: dict, settings: dict) -> dict | None:
    """An earlier arms.json's judgement of the very same checkpoint with the same settings, to reuse."""
    old = (previous.get("arms") or {}).get(name) or {}
    same = (old.get("checkpoint") == record["checkpoint"] and old.get("checkpoint_written_at") == record["checkpoint_written_at"]
            and previous.get("judging") == settings and old.get("judged"))
    return old["judged"] if same else None


def _source_judgement(previous: dict, source: Source, settings: dict) -> dict | None:
    """An earlier arms.json's judgement of the same source checkpoint with the same settings, to reuse."""
    earlier = previous.get("source") or {}
    same = previous.get("judging") == settings and earlier.get("checkpoint") == str(source.checkpoint)
    return earlier.get("judged") if same else None


def run_arms(checkpoint: str | Path, out: str | Path | None = None, arms: list[str] | tuple = ARMS, epochs: int = 9,
             n_per_category: int = 100, seed: int = 0, restart_peak: float | None = None, overrides: list[str] | None = None,
             batch_size: int = 64, progress: str = "auto", root: str | Path | None = None, log=print) -> dict:
    """Train and judge every arm (skipping arms already trained), write `<out>/arms/arms.json`, return its content."""
    from t2ilab.files import read_json
    from t2ilab.review.arms_report import write_results

    source = read_source(checkpoint)
    out = Path(out) if out is not None else source.checkpoint.parent
    plans = plan_arms(source, list(arms), epochs, out, restart_peak, overrides)
    configs = [arm_config(plan, source, root) for plan in plans]  # every arm's config is checked before any training
    sampling = {"scheduler": source.cfg.sampling.scheduler, "steps": source.cfg.sampling.num_inference_steps,
                "guidance": source.cfg.sampling.guidance_scale}
    settings = {"n_per_category": n_per_category, "seed": seed, "sampling": sampling, "weights": "ema"}
    results_path = out / "arms" / RESULTS_FILE
    previous = read_json(results_path) or {}  # an earlier, maybe interrupted, arms run: its judgements are reused
    result = {"source": {"checkpoint": str(source.checkpoint), "epoch": source.epoch, "global_step": source.global_step,
                         "learning_rate_at_checkpoint": source.current_lr},
              "epochs": epochs, "results_file": str(results_path), "judging": settings, "baseline": BASELINE, "arms": {}, "complete": False,
              "method": "strict overall = all judged images pooled (equal N per category); differences vs the baseline: "
                        "Newcombe (1998) method 10, 95 %; 'better'/'worse' only when the interval excludes 0"}
    result["source"]["judged"] = _source_judgement(previous, source, settings)
    if result["source"]["judged"] is None:
        log(f"judging the source checkpoint {source.checkpoint.name} (epoch {source.epoch}), {n_per_category} per category")
        result["source"]["judged"] = judge_checkpoint(source.checkpoint, sampling, n_per_category, seed, batch_size)
    for plan, cfg in zip(plans, configs):
        log(f"== arm {plan.name}: {plan.change}; epochs {source.epoch} -> {plan.target_epoch} in {plan.output_dir}")
        record = train_arm(plan, cfg, source, progress)
        old = (previous.get("arms") or {}).get(plan.name) or {}
        if record["status"] != "trained" and old.get("checkpoint") == record["checkpoint"] and "train_minutes" in old:
            record["train_minutes"] = old["train_minutes"]  # the minutes it took when it was trained
        record["judged"] = _earlier_judgement(previous, plan.name, record, settings) or judge_checkpoint(
            record["checkpoint"], sampling, n_per_category, seed, batch_size)
        result["arms"][plan.name] = record
        write_results(result, out / "arms")  # after every arm: an interrupted run keeps what it measured
    baseline = result["arms"].get(BASELINE)
    for name, record in result["arms"].items():
        record["vs_baseline"] = compare(record["judged"], baseline["judged"]) if baseline and name != BASELINE else None
    result["complete"] = True
    write_results(result, out / "arms")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t2ilab arms", description="Branch one checkpoint into arms (the guide's advice), "
                                "train each the same extra epochs and judge them against 'continue'.")
    p.add_argument("checkpoint", help="the source checkpoint folder (never modified), or a run's output dir for its newest")
    p.add_argument("--out", help="the arms go to OUT/arms/<arm>/ (default: the checkpoint's run folder)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {','.join(ARMS)} (default: all)")
    p.add_argument("--epochs", type=int, default=9, help="extra epochs each arm trains (default 9)")
    p.add_argument("--n-per-category", type=int, default=100, help="judged images per category per arm (default 100)")
    p.add_argument("--seed", type=int, default=0, help="judging prompts and noise seed, the same for every arm")
    p.add_argument("--restart-peak", type=float, help="peak of the restart arm's new cosine (default: the run's peak / 2)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every arm, e.g. --set data.cache_dir=/tmp/cache")
    p.add_argument("--batch-size", type=int, default=64, help="images per sampling batch while judging")
    p.add_argument("--progress", choices=["auto", "bar", "plain", "none"], default="auto")
    return p


def main(argv: list[str]) -> int:
    from t2ilab.paths import caller_overrides, caller_path
    from t2ilab.review.arms_report import render
    from t2ilab.training.runlog import RunLockedError

    args = build_parser().parse_args(argv)
    if not 1 <= args.n_per_category <= 10_000 or not 1 <= args.batch_size <= 4096 or not 0 <= args.seed <= SEED_MAX:
        print(f"error: --n-per-category must be from 1 to 10000, --batch-size from 1 to 4096 and --seed from 0 to {SEED_MAX}",
              file=sys.stderr)
        return 2
    try:
        result = run_arms(caller_path(args.checkpoint), caller_path(args.out), [a.strip() for a in args.arms.split(",") if a.strip()],
                          args.epochs, args.n_per_category, args.seed, args.restart_peak, caller_overrides(args.overrides),
                          args.batch_size, args.progress)
    except (ArmsError, ConfigError, CheckpointError, RunLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(render(result))
    print(f"\nfull numbers: {result['results_file']}")
    return 0
