"""Training throughput: samples/s of t2ilab's `Trainer.train_step` against the loop of diffusers'
examples/text_to_image/train_text_to_image.py (bench/reference_loop.py), in interleaved rounds in one process;
then FLOP utilisation, speed-ups tried as variants of the t2ilab step, and OpenMP thread settings (child processes).
A floor runner (the model's forward and backward alone) bounds what any training loop around this model can gain.

    .venv/bin/python bench/train_throughput.py                      # demo.yaml, 5 rounds x 8 steps, all variants
    .venv/bin/python bench/train_throughput.py --quick              # 2 rounds x 3 steps, no variants
    .venv/bin/python bench/train_throughput.py --config configs/train_config.yaml --steps 3 --variants none

The config is trained with common.BASELINE_RECIPE (v-prediction + Min-SNR-5, scratch text encoder, no CoordConv):
the reference loop knows neither flow matching nor CoordConv, and a frozen encoder would leave it nothing to match.

Equal work: both sides train the same modules (the UNet and the scratch CLIPTextModel), from the same initial
weights, at the same batch, precision (fp32 on CPU, bf16 through accelerate on CUDA), thread count and Min-SNR
weighting (the script's formula).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from common import (
    BASELINE_RECIPE,
    REPO_ROOT,
    cpu_flags,
    device_sync,
    format_table,
    interleaved_rounds,
    load_average,
    median,
    omp_note,
    wait_for_quiet,
)
from reference_loop import ReferenceLoop
from t2ilab.config import load_config
from t2ilab.datasets.data import load_dataset
from t2ilab.training.model import build_unet
from t2ilab.training.resume import build_lr_scheduler
from t2ilab.training.runlog import release_lock
from t2ilab.training.text import build_text_encoder
from t2ilab.training.train import Trainer, epoch_order, mixed_precision
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

VARIANTS = ("channels_last", "compile", "bf16", "foreach_adamw")
FLOOR = "model fwd+bwd only"


# ---------------------------------------------------------------- t2ilab and its variants
class T2ilabRunner:
    """Trainer(cfg).train_step over consecutive batches, with optional speed-up tweaks applied from outside."""

    def __init__(self, config: str, overrides: list[str], workdir: Path, tweaks: list[str]):
        self.cfg = load_config(config, overrides + [f"output_dir={workdir}"])
        self.trainer = tr = Trainer(self.cfg, progress="none")
        self.tweaks = tweaks
        self.epoch, self.index = 0, 0
        self.order = epoch_order(tr.train_idx, self.cfg.training.seed, 0)
        unet = tr.accelerator.unwrap_model(tr.unet)
        if "channels_last" in tweaks:
            unet.to(memory_format=torch.channels_last)
        if "foreach_adamw" in tweaks:  # t2ilab's optimizer before it became fused: what fusing bought
            t = self.cfg.training
            params = [p for g in tr.optimizer.param_groups for p in g["params"]]
            foreach = torch.optim.AdamW(params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                                        weight_decay=t.adam_weight_decay, eps=t.adam_epsilon, foreach=True)
            tr.lr_scheduler = build_lr_scheduler(foreach, tr.segment)
            tr.optimizer = tr.accelerator.prepare(foreach)
        if "compile" in tweaks:
            unet.compile()  # in place (nn.Module.compile): Trainer, EMA and optimizer see the same module
        self.compile_s, self.compile_load = None, None

    def run(self, steps: int) -> int:
        tr = self.trainer
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in self.tweaks else contextlib.nullcontext()
        with autocast:
            for _ in range(steps):
                if self.index == tr.steps_per_epoch:
                    self.epoch, self.index = self.epoch + 1, 0
                    self.order = epoch_order(tr.train_idx, self.cfg.training.seed, self.epoch)
                tr.train_step(self.order, self.index)
                self.index += 1
        return steps * self.cfg.training.batch_size

    def close(self) -> None:
        if self.trainer.lock:
            release_lock(self.trainer.lock)


def model_only_runner(config: str, overrides: list[str], workdir: Path) -> tuple[Callable[[int], int], T2ilabRunner]:
    """The floor: text encoder + UNet forward, loss and backward on one fixed batch; no data, optimizer, clipping,
    EMA or logging. No training loop around this model can be faster than this without changing its kernels."""
    runner = T2ilabRunner(config, overrides, workdir, [])
    tr = runner.trainer
    idx, rows, timesteps, noise = tr._batch(runner.order, 0)
    params = [p for group in tr.optimizer.param_groups for p in group["params"]]
    tr.unet.train()
    tr.text_encoder.train(tr.text_trainable)

    def run(steps: int) -> int:
        for _ in range(steps):
            mse, weights = tr.forward_loss(tr.unet, idx, rows, timesteps, noise)
            loss = (mse * weights).mean()
            loss.backward()
            for p in params:
                p.grad = None
        return steps * len(idx)

    return run, runner


# ---------------------------------------------------------------- FLOPs and the matmul peak
def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's FLOP registry knows the CUDA attention kernels but not the CPU one SDPA picks here: count it the same way.
CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
                       torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward}


def flops_per_sample(cfg, ds) -> float:
    """Matmul/conv/attention FLOPs of one forward+backward of text encoder + UNet, per sample."""
    captions = [ds.captions[i] for i in ds.train_idx]
    text_encoder, tokenizer, _ = build_text_encoder(cfg.model, captions)
    unet = build_unet(cfg.model, cfg.data.resolution, text_encoder.config.hidden_size)
    b, res = cfg.training.batch_size, cfg.data.resolution
    ids = tokenizer(captions[:b], max_length=cfg.model.max_caption_tokens, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids
    x, t = torch.randn(b, 3, res, res), torch.randint(0, cfg.noise.num_train_timesteps, (b,))
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        hidden = text_encoder(ids)[0]
        unet(x, t, hidden).sample.float().pow(2).mean().backward()
    return counter.get_total_flops() / b


def matmul_peak_gflops(dtype: torch.dtype, device: str = "cpu", n: int = 2048, reps: int = 5) -> float:
    """Best of `reps` n x n matmuls at the current thread count (on a GPU: on it, synchronized)."""
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        device_sync()
        t0 = time.perf_counter()
        torch.mm(a, b)
        device_sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


# ---------------------------------------------------------------- OpenMP thread settings (need a fresh process)
def thread_settings() -> dict[str, tuple[int, dict]]:
    """name -> (torch threads, environment overrides); OMP_* is read once when the OpenMP runtime starts.
    torch's default is one thread per core; OpenMP's default wait policy spins before it sleeps."""
    cores = os.cpu_count() or 1
    return {f"{cores} threads (torch default)": (cores, {}),
            f"{cores} threads, OMP_WAIT_POLICY=PASSIVE": (cores, {"OMP_WAIT_POLICY": "PASSIVE"}),
            "1 thread": (1, {})}


def child_rate(args, threads: int, env: dict) -> float:
    """samples/s of the plain t2ilab step in a fresh process (timed inside it: start-up excluded)."""
    command = [sys.executable, __file__, "--config", args.config, "--threads", str(threads), "--child-steps", str(args.steps),
               "--warmup", str(max(1, args.warmup))] + (["--batch-size", str(args.batch_size)] if args.batch_size else [])
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = subprocess.run(command, env={**base, **env}, capture_output=True, text=True, check=True).stdout
    return float(next(l for l in out.splitlines() if l.startswith("SAMPLES_PER_S")).split()[1])


def run_child(args, overrides: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="t2ilab-bench-") as tmp:
        runner = T2ilabRunner(args.config, overrides, Path(tmp), [])
        runner.run(args.warmup)
        t0 = time.perf_counter()
        samples = runner.run(args.child_steps)
        print(f"SAMPLES_PER_S {samples / (time.perf_counter() - t0):.4f}")
        runner.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo.yaml", help="run config giving model, data and batch (also configs/train_config.yaml)")
    p.add_argument("--batch-size", type=int, help="override training.batch_size")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both sides")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per side per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before each timed block")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma list of t2ilab variants; join tweaks with + (e.g. bf16+channels_last); 'none'. Known: {', '.join(VARIANTS)}")
    p.add_argument("--thread-rounds", type=int, default=3, help="rounds of the thread-settings comparison (0: skip)")
    p.add_argument("--quick", action="store_true", help="2 rounds x 3 steps, 1 warm-up, no variants, no thread settings")
    p.add_argument("--child-steps", type=int, help=argparse.SUPPRESS)  # internal: one thread-settings measurement
    p.add_argument("--max-load", type=float, default=1.5, help="wait for the 1-minute load average to drop below this")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup, args.variants, args.thread_rounds = 2, 3, 1, "none", 0
    variants = [] if args.variants in ("", "none") else args.variants.split(",")
    for v in variants:
        unknown = [t for t in v.split("+") if t not in VARIANTS]
        if unknown:
            p.error(f"unknown variant tweak(s) {unknown}; known: {', '.join(VARIANTS)}")
    os.chdir(REPO_ROOT)
    torch.set_num_threads(args.threads)
    overrides = BASELINE_RECIPE + ([f"training.batch_size={args.batch_size}"] if args.batch_size else [])
    if args.child_steps:
        return run_child(args, overrides)
    cfg = load_config(args.config, overrides)
    ds = load_dataset(cfg.data)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = {"no": "fp32"}.get(mixed_precision(cfg), mixed_precision(cfg))
    where = f"{Path(args.config).name}, batch {cfg.training.batch_size}, {args.threads} threads{omp_note()}, {device}, {precision}"
    print(f"train_throughput: {where}; snr_gamma={cfg.training.snr_gamma} (both sides), prediction {cfg.noise.prediction_type}")

    with tempfile.TemporaryDirectory(prefix="t2ilab-bench-") as tmp:
        ref = ReferenceLoop(cfg, ds)
        runners = {"reference": ref.run}
        t2i = {"t2ilab": T2ilabRunner(args.config, overrides, Path(tmp) / "plain", [])}
        for v in variants:
            try:
                t2i[f"t2ilab+{v}"] = r = T2ilabRunner(args.config, overrides, Path(tmp) / v, v.split("+"))
                if "compile" in v:  # the first step compiles forward and backward: time it on its own
                    t0 = time.perf_counter()
                    r.run(1)
                    r.compile_s, r.compile_load = time.perf_counter() - t0, load_average()
            except Exception as exc:  # e.g. inductor without a C++ compiler: skip, say why
                print(f"  variant {v} skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                t2i.pop(f"t2ilab+{v}", None)
        runners.update({name: r.run for name, r in t2i.items()})
        floor, floor_runner = model_only_runner(args.config, overrides, Path(tmp) / "floor")
        runners[FLOOR] = floor
        print(f"  load average before measuring: {wait_for_quiet(args.max_load):.2f}")
        rates, loads = interleaved_rounds(runners, args.rounds, args.steps, args.warmup)
        for r in [*t2i.values(), floor_runner]:
            r.close()

    names = list(runners)
    rows = [[i + 1, *(rates[n][i] for n in names)] for i in range(args.rounds)]
    rows.append(["median", *(median(rates[n]) for n in names)])
    print("\nsamples/s per round (alternating order, median of rounds last):")
    print(format_table(["round", *names], rows))

    per_sample = flops_per_sample(cfg, ds)
    peak = matmul_peak_gflops(torch.bfloat16 if precision == "bf16" else torch.float32, device)
    achieved = per_sample * median(rates["t2ilab"]) / 1e9
    print(f"\nFLOPs/sample (fwd+bwd, text encoder + UNet, matmul/conv/attention only): {per_sample / 1e9:.3f} GFLOP")
    print(f"achieved (t2ilab, {precision}): {achieved:.1f} GFLOP/s; {precision} matmul peak (2048^2, {device}, "
          f"{args.threads} threads): {peak:.1f} GFLOP/s; utilisation {100 * achieved / peak:.1f} %")
    flags = cpu_flags()
    print(f"bf16 on this CPU: avx512_bf16={'avx512_bf16' in flags}, amx_bf16={'amx_bf16' in flags}; "
          f"bf16 matmul peak {matmul_peak_gflops(torch.bfloat16):.1f} GFLOP/s")
    for name, r in t2i.items():
        if r.compile_s is not None:
            print(f"{name}: first step (compiles forward+backward) took {r.compile_s:.1f} s (load then {r.compile_load:.2f})")

    def paired(a: str, b: str, table: dict = rates) -> float:
        return median([x / y for x, y in zip(table[a], table[b])])

    thread_rates: dict[str, list[float]] = {}
    if args.thread_rounds:
        settings = thread_settings()
        print(f"\nthread settings: plain t2ilab step in a fresh process per measurement, {args.steps} steps after "
              f"{max(1, args.warmup)} warm-up, alternating order, {args.thread_rounds} rounds (load now {load_average():.2f}):")
        thread_rates = {name: [] for name in settings}
        for r in range(args.thread_rounds):
            for name in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
                thread_rates[name].append(child_rate(args, *settings[name]))
            loads.append(load_average())
        rows = [[i + 1, *(thread_rates[n][i] for n in settings)] for i in range(args.thread_rounds)]
        rows.append(["median", *(median(thread_rates[n]) for n in settings)])
        print(format_table(["round", *settings], rows))

    print(f"\nload average during measurement (includes this benchmark's own threads): "
          f"min {min(loads):.2f}, max {max(loads):.2f}; now {load_average():.2f}")
    print(f"BOUND train_throughput ({FLOOR})/reference = {paired(FLOOR, 'reference'):.2f}x (the most any loop around "
          f"this model can gain over the reference without changing the model's kernels; t2ilab reaches "
          f"{paired('t2ilab', FLOOR):.2f} of it)")
    for name in t2i:
        if name != "t2ilab":
            print(f"VARIANT {name}/t2ilab = {paired(name, 't2ilab'):.2f}x (median of per-round ratios)")
    default = next(iter(thread_rates), None)
    for name in list(thread_rates)[1:]:
        print(f"VARIANT threads: {name} / {default} = {paired(name, default, thread_rates):.2f}x (median of per-round ratios)")
    print(f"RATIO train_throughput t2ilab/reference = {paired('t2ilab', 'reference'):.2f}x "
          f"(median of {args.rounds} rounds x {args.steps} steps, {where})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
