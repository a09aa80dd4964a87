"""The training loop: accelerate for devices and precision, EMA, Min-SNR, caption dropout, exact resume.

Randomness is a pure function of (seed, global step): the noise, timesteps and caption dropout of step s
come from a generator seeded with (seed, s), and the data order of epoch e from a permutation seeded with
(seed, e). So the position in a run is just (epoch, batch index), and a resumed run repeats nothing and
skips nothing; on CPU it is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import UNet2DConditionModel
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file

from t2ilab import __version__
from t2ilab.checkpoint import (
    CheckpointError,
    checkpoint_folders,
    checkpoint_name,
    later_checkpoints,
    load_training_state,
    padded,
    quiet_hub_progress,
    remove_stale_temporaries,
    resolve_checkpoint,
    rotate_checkpoints,
    save_model_parts,
    save_training_state,
    write_checkpoint,
)
from t2ilab.cli import caller_overrides, caller_path, launcher_processes
from t2ilab.config import Config, ConfigError, load_config
from t2ilab.data import dataset_ids, load_dataset, split_change, to_model_range
from t2ilab.losses import diffusion_target, loss_weights, stratified_timesteps
from t2ilab.model import build_noise_scheduler, build_unet
from t2ilab.resume import ResumePlan, build_lr_scheduler, fresh_segment, plan_resume
from t2ilab.runlog import RunLockedError, RunLog, acquire_lock, format_train_line, format_val_line, release_lock
from t2ilab.text import build_text_encoder, caption_vocabulary, load_pretrained_text_encoder, tokenize


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf."""


@dataclass
class TrainResult:
    output_dir: Path
    epoch: int
    global_step: int
    last_checkpoint: Path | None
    stopped: str  # "finished" | "max_steps" | "stop_at_epoch" | "signal"


def mixed_precision(cfg: Config) -> str:
    """bf16 on CUDA, full precision on CPU, unless the config says otherwise."""
    if cfg.training.mixed_precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return cfg.training.mixed_precision


def epoch_order(train_idx: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The data order of one epoch: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(train_idx)


def step_generator(seed: int, global_step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + global_step)


def _load_text_side(cfg: Config, ckpt: Path | None, captions: list[str]):
    try:
        return _load_text_parts(cfg, ckpt, captions)
    except (CheckpointError, ConfigError):
        raise
    except Exception as exc:  # a truncated safetensors file, a pickle refused by weights_only, a broken tokenizer
        if ckpt is None:
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CheckpointError(
            f"cannot load the text encoder or tokenizer from {ckpt}: {first}. The files are corrupt or not t2ilab's; "
            f"resume from another checkpoint."
        ) from None


def _check_output_dir(out: Path) -> None:
    """output_dir must be a folder this process can write; say so before anything is trained."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={out} is a file, not a folder; choose another output_dir (--set output_dir=...)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output_dir={out} cannot be written ({exc.strerror}); choose another output_dir") from None


def _load_text_parts(cfg: Config, ckpt: Path | None, captions: list[str]):
    if ckpt is None:
        return build_text_encoder(cfg.model, captions)
    if cfg.model.text_encoder == "scratch":
        from transformers import CLIPTextModel, PreTrainedTokenizerFast

        return CLIPTextModel.from_pretrained(ckpt / "text_encoder"), PreTrainedTokenizerFast.from_pretrained(ckpt / "tokenizer"), True
    encoder, tokenizer = load_pretrained_text_encoder(str(ckpt / "text_encoder"))
    return encoder, tokenizer, False


def _load_weights(module: torch.nn.Module, folder: Path, what: str) -> None:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} has no .safetensors weights for the {what}")
    try:
        state = {}
        for f in files:
            state.update(load_file(f))
        module.load_state_dict(state, strict=True)
    except Exception as exc:  # safetensors raises its own SafetensorsError for a truncated or corrupt file
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise CheckpointError(f"cannot load the {what} from {folder}: {first}. Was it written by another model config?") from None


class Trainer:
    """One run: set-up, the loop, validation and checkpoints. Use `train()` for the whole thing."""

    def __init__(self, cfg: Config, resume: str | None = None, progress: str = "auto", on_milestone=None,
                 overwrite: bool = False):
        self.cfg = cfg
        self.overwrite = overwrite
        self.on_milestone = on_milestone
        self.background: list = []  # report processes started on milestones (subprocess.Popen), while they run
        self.threads = torch.get_num_threads()
        t = cfg.training
        self.out = Path(cfg.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=mixed_precision(cfg),
            cpu=not torch.cuda.is_available(),  # lets `accelerate launch --multi_gpu`/torchrun use gloo on CPUs
            log_with="tensorboard" if t.tensorboard else None,
            project_dir=str(self.out),
        )
        acc = self.accelerator
        self.is_main = acc.is_main_process
        self.world = acc.num_processes
        micro = t.batch_size // (self.world * t.gradient_accumulation_steps)
        if micro * self.world * t.gradient_accumulation_steps != t.batch_size:
            raise ConfigError(
                f"training.batch_size={t.batch_size} must be divisible by processes ({self.world}) x "
                f"training.gradient_accumulation_steps ({t.gradient_accumulation_steps})"
            )
        self.micro = micro
        _check_output_dir(self.out)
        self.lock = acquire_lock(self.out) if self.is_main else None
        try:
            self._setup(resume, progress)
        except BaseException:
            if self.lock:
                release_lock(self.lock)
            raise

    # ------------------------------------------------------------------ set-up
    def _setup(self, resume: str | None, progress: str) -> None:
        cfg, t, acc = self.cfg, self.cfg.training, self.accelerator
        quiet_hub_progress()
        if self.is_main:
            remove_stale_temporaries(self.out)
        self.ds = load_dataset(cfg.data)
        self.train_idx, self.val_idx = self.ds.train_idx, self.ds.val_idx
        self.steps_per_epoch = len(self.train_idx) // t.batch_size
        if len(self.val_idx) == 0:
            raise ConfigError(
                f"data.val_fraction={cfg.data.val_fraction} leaves no validation images of {len(self.ds.captions)}, so "
                f"the validation loss the diagnosis reads would be nan; raise it (0.05 is the default)"
            )
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"training.batch_size={t.batch_size} is larger than the training split ({len(self.train_idx)} images); "
                f"lower it or raise data.num_samples"
            )
        ckpt = resolve_checkpoint(resume, self.out) if resume else None
        if ckpt is None and t.lr_restart is not None:
            raise ConfigError(
                f"training.lr_restart={t.lr_restart} restarts the schedule of a resumed run, but this run starts from "
                f"scratch (no --resume); remove it (its peak is training.learning_rate) or resume a checkpoint"
            )
        in_the_way = self._in_the_way(ckpt)
        torch.manual_seed(t.seed)  # model initialisation is the only use of the global RNG
        captions = [self.ds.captions[i] for i in self.train_idx]
        self.text_encoder, self.tokenizer, self.text_trainable = _load_text_side(cfg, ckpt, captions)
        with warnings.catch_warnings():  # the tokenizer has said so already when the vocabulary is capped
            warnings.simplefilter("ignore")
            self.vocabulary = caption_vocabulary(captions, cfg.model.max_caption_tokens)
        self.noise_scheduler = build_noise_scheduler(cfg.noise)
        self.unet = build_unet(cfg.model, cfg.data.resolution, self.text_encoder.config.hidden_size)
        if ckpt is not None:
            state_opt, state_sched, rng, state = load_training_state(ckpt)
            old_cfg = load_config(ckpt / "config.yaml")
            current_lr = state_opt["param_groups"][0]["lr"]
            self.plan: ResumePlan | None = plan_resume(
                ckpt, state, old_cfg, cfg, self.ds.fingerprint, self.steps_per_epoch, current_lr, self.world
            )
            _load_weights(self.unet, ckpt / "unet", "UNet")
            # Resuming onto a grown or shrunk data set: say where the new images went (issue 14).
            old_fingerprint = state.get("data_fingerprint")
            self.split_line = None if old_fingerprint == self.ds.fingerprint else split_change(
                dataset_ids(old_cfg.data, old_fingerprint), self.ds, cfg.data.val_fraction, cfg.data.seed)
        else:
            self.plan, state, self.split_line = None, {}, None
        self.ema = None
        if t.use_ema:
            self.ema = EMAModel(
                self.unet.parameters(), decay=t.ema_max_decay, use_ema_warmup=True, inv_gamma=t.ema_inv_gamma,
                power=t.ema_power, foreach=True, model_cls=UNet2DConditionModel, model_config=self.unet.config,
            )
            if ckpt is not None and (ckpt / "unet_ema").is_dir():
                shadow = build_unet(cfg.model, cfg.data.resolution, self.text_encoder.config.hidden_size)
                _load_weights(shadow, ckpt / "unet_ema", "EMA UNet")
                self.ema.shadow_params = [p.detach().clone() for p in shadow.parameters()]
                self.ema.optimization_step = state.get("ema_optimization_step", 0)
        params = list(self.unet.parameters()) + (list(self.text_encoder.parameters()) if self.text_trainable else [])
        if not self.text_trainable:
            self.text_encoder.requires_grad_(False)
        # Fused AdamW (one kernel for all parameters): 1.10x samples/s over foreach on 2 CPU cores at demo size
        # (bench/RESULTS.md, train_throughput variant foreach_adamw = 0.91x); the same update up to rounding.
        fused = acc.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(
            params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.adam_weight_decay,
            eps=t.adam_epsilon, fused=fused, foreach=not fused,
        )
        if ckpt is not None:
            self.optimizer.load_state_dict(state_opt)
            self.segment = self.plan.lr_segment
            self.lr_scheduler = build_lr_scheduler(self.optimizer, self.segment)
            if not self.plan.new_segment:
                self.lr_scheduler.load_state_dict(state_sched)
                for group, lr in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr()):
                    group["lr"] = lr
            self.epoch, self.step_in_epoch, self.global_step = self.plan.epoch, self.plan.step_in_epoch, self.plan.global_step
            # Running log sums continue exactly unless the plan changed the run (then they restart empty).
            self.accum = {k: v.clone() for k, v in rng["accumulators"].items()} if not self.plan.warnings else None
            torch.set_rng_state(rng["torch"])
        else:
            self.segment = fresh_segment(cfg, self.steps_per_epoch)
            self.lr_scheduler = build_lr_scheduler(self.optimizer, self.segment)
            self.epoch, self.step_in_epoch, self.global_step, self.accum = 0, 0, 0, None
        if self.accum is None:
            self.accum = self._zero_accumulators()
        self.last_checkpoint = ckpt

        # Everything the loop touches lives on the device once: uint8 images and token ids.
        dev = acc.device
        self.images = self.ds.images.to(dev)
        all_ids = tokenize(self.tokenizer, self.ds.captions + [""], cfg.model.max_caption_tokens)
        self.input_ids, self.attn_mask = all_ids["input_ids"].to(dev), all_ids["attention_mask"].to(dev)
        self.empty_row = len(self.ds.captions)
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(dev)
        if self.text_trainable:
            self.unet, self.text_encoder, self.optimizer = acc.prepare(self.unet, self.text_encoder, self.optimizer)
            self.cached_embeddings = None
        else:
            self.unet, self.optimizer = acc.prepare(self.unet, self.optimizer)
            self.text_encoder.to(dev)
            self.cached_embeddings = self._embed_all()  # a frozen encoder's outputs never change: compute once
        if self.ema is not None:
            self.ema.to(dev)
        if in_the_way and self.is_main:  # --overwrite, and every check above passed: discard what it names
            for path in in_the_way:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        total = t.num_epochs * self.steps_per_epoch
        self.log = RunLog(self.out, total, self.global_step, self.is_main, progress)
        if self.log.repaired:
            self.log.info(f"metrics.jsonl ended in a partial line (a run stopped mid-write); cut off, kept here: {self.log.repaired}")
        if t.tensorboard:
            acc.init_trackers("t2ilab")
        self._announce()

    def _in_the_way(self, ckpt: Path | None) -> list[Path]:
        """What this run would overwrite in output_dir: refused, unless --overwrite asks to discard it."""
        if ckpt is None:
            existing = checkpoint_folders(self.out)
            if not existing:
                return []
            if not self.overwrite:
                raise ConfigError(
                    f"output_dir {self.out} already holds a run ({len(existing)} checkpoint(s), newest {existing[-1].name}); "
                    f"training from scratch would overwrite its checkpoints and mix two runs in metrics.jsonl. Continue "
                    f"it with --resume latest, choose another output_dir (--set output_dir=...), or pass --overwrite to discard it."
                )
            return existing + [p for p in (self.out / "metrics.jsonl", self.out / "train.log") if p.exists()]
        later = later_checkpoints(self.out, ckpt)
        if later and not self.overwrite:
            raise CheckpointError(
                f"resuming {ckpt.name} would overwrite the later checkpoint(s) {', '.join(p.name for p in later)} in "
                f"{self.out}. Continue the newest with --resume latest, branch into another folder with --set "
                f"output_dir=NEW_DIR, or pass --overwrite to discard the later ones."
            )
        return later

    def _zero_accumulators(self) -> dict[str, torch.Tensor]:
        bins = self.cfg.training.loss_bins
        z = lambda n: torch.zeros(n, dtype=torch.float64)  # noqa: E731
        return {"loss": z(1), "mse_bins": z(bins), "count_bins": z(bins), "steps": z(1), "grad_norm": z(1),
                "epoch_loss": z(1), "epoch_steps": z(1)}

    def _embed_all(self) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(self.input_ids), 256):
                out.append(self.text_encoder(input_ids=self.input_ids[i:i + 256], attention_mask=self.attn_mask[i:i + 256]).last_hidden_state)
        return torch.cat(out)

    def _announce(self) -> None:
        cfg = self.cfg
        n_unet = sum(p.numel() for p in self.accelerator.unwrap_model(self.unet).parameters())
        n_text = sum(p.numel() for p in self.text_encoder.parameters())
        self.log.info(
            f"t2ilab {__version__}: {len(self.train_idx)} train / {len(self.val_idx)} val images at {cfg.data.resolution}px "
            f"({cfg.data.source}); UNet {n_unet / 1e6:.2f} M params, text encoder {n_text / 1e6:.2f} M "
            f"({'trained' if self.text_trainable else 'frozen'}); {self.steps_per_epoch} steps/epoch, batch "
            f"{cfg.training.batch_size} on {self.world} process(es), device {self.accelerator.device}, "
            f"precision {mixed_precision(cfg)}"
        )
        if self.plan is not None:
            for line in self.plan.render().splitlines():
                self.log.info(line)
        if self.split_line:
            self.log.info(self.split_line)

    def _share_cpu(self) -> None:
        """One torch thread while a background report runs on a CPU-only machine, all of them again after.

        Two OpenMP threads spin-wait for each other when a third busy process takes a core: measured on 2 cores,
        training fell from ~100 to ~10 samples/s while a milestone report ran (bench/background_reports.py)."""
        if not self.background:
            return
        self.background = [c for c in self.background if c.poll() is None]
        want = 1 if self.background and self.accelerator.device.type == "cpu" else self.threads
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
            self.log.info(f"torch threads: {want} ({'a report is running beside training' if want == 1 else 'reports done'})")

    # ------------------------------------------------------------------ one step
    def _batch(self, order: np.ndarray, index: int):
        """The global batch of this step, this process's slice of it, and its random draws."""
        t, cfg = self.cfg.training, self.cfg
        idx = torch.as_tensor(order[index * t.batch_size:(index + 1) * t.batch_size])
        gen = step_generator(t.seed, self.global_step)
        res = cfg.data.resolution
        timesteps = torch.randint(0, cfg.noise.num_train_timesteps, (t.batch_size,), generator=gen)
        noise = torch.randn((t.batch_size, 3, res, res), generator=gen)
        if t.offset_noise > 0:
            noise = noise + t.offset_noise * torch.randn((t.batch_size, 3, 1, 1), generator=gen)
        drop = torch.rand(t.batch_size, generator=gen) < t.caption_dropout
        rows = torch.where(drop, torch.full_like(idx, self.empty_row), idx)
        share = t.batch_size // self.world
        mine = slice(self.accelerator.process_index * share, (self.accelerator.process_index + 1) * share)
        dev = self.accelerator.device
        return idx[mine].to(dev), rows[mine].to(dev), timesteps[mine].to(dev), noise[mine].to(dev)

    def _encode(self, rows: torch.Tensor) -> torch.Tensor:
        if self.cached_embeddings is not None:
            return self.cached_embeddings[rows]
        return self.text_encoder(input_ids=self.input_ids[rows], attention_mask=self.attn_mask[rows]).last_hidden_state

    def _loss(self, unet, idx, rows, timesteps, noise):
        clean = to_model_range(self.images[idx])
        noisy_images = self.noise_scheduler.add_noise(clean, noise, timesteps)
        with self.accelerator.autocast():
            encoder_hidden_states = self._encode(rows)
            model_pred = unet(noisy_images, timesteps, encoder_hidden_states=encoder_hidden_states).sample
        target = diffusion_target(self.noise_scheduler, clean, noise, timesteps)
        mse = ((model_pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
        weights = loss_weights(self.alphas_cumprod, timesteps, self.cfg.noise.prediction_type, self.cfg.training.snr_gamma)
        return (mse * weights).mean(), mse

    def train_step(self, order: np.ndarray, index: int) -> None:
        t, acc = self.cfg.training, self.accelerator
        idx, rows, timesteps, noise = self._batch(order, index)
        self.unet.train()
        self.text_encoder.train(self.text_trainable)
        n_micro = t.gradient_accumulation_steps
        step_loss = torch.zeros((), device=acc.device)
        mses, ts = [], []
        for m in range(n_micro):
            part = slice(m * self.micro, (m + 1) * self.micro)
            sync = nullcontext() if m == n_micro - 1 else acc.no_sync(self.unet)
            with sync:
                loss, mse = self._loss(self.unet, idx[part], rows[part], timesteps[part], noise[part])
                if os.environ.get("T2ILAB_FAULT_NAN_AT_STEP") == str(self.global_step + 1):
                    loss = loss * float("nan")  # fault-injection hook for the NaN guard test
                acc.backward(loss / n_micro)
            step_loss += loss.detach() / n_micro
            mses.append(mse.detach())
            ts.append(timesteps[part])
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = acc.clip_grad_norm_(params, t.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(acc.unwrap_model(self.unet).parameters())
        self.global_step += 1
        self._accumulate(step_loss, torch.cat(mses), torch.cat(ts), grad_norm)

    def _accumulate(self, loss, mse, timesteps, grad_norm) -> None:
        """Running sums on the device; read back only at log intervals (no per-step host sync)."""
        a, T, bins = self.accum, self.cfg.noise.num_train_timesteps, self.cfg.training.loss_bins
        if a["loss"].device != loss.device:
            self.accum = a = {k: v.to(loss.device) for k, v in a.items()}
        which = (timesteps * bins // T).long()
        a["loss"] += loss.double()
        a["epoch_loss"] += loss.double()
        a["steps"] += 1
        a["epoch_steps"] += 1
        a["grad_norm"] += grad_norm.double() if torch.is_tensor(grad_norm) else float(grad_norm)
        a["mse_bins"].index_add_(0, which, mse.double())
        a["count_bins"].index_add_(0, which, torch.ones_like(mse, dtype=torch.float64))

    # ------------------------------------------------------------------ logging and validation
    def _log_interval(self, seconds: float) -> None:
        # Each process saw its slice of the global batch: average over processes for the global numbers.
        a = {k: self.accelerator.reduce(v.clone(), reduction="mean") for k, v in self.accum.items()}
        steps = max(1.0, a["steps"].item())
        loss, gnorm = a["loss"].item() / steps, a["grad_norm"].item() / steps
        if not math.isfinite(loss):
            self._diverged(loss)
        counts = a["count_bins"].tolist()
        bins = [(s / c if c else None) for s, c in zip(a["mse_bins"].tolist(), counts)]
        lr = self.optimizer.param_groups[0]["lr"]
        sps = steps * self.cfg.training.batch_size / max(seconds, 1e-9)
        self.log.info(format_train_line(self.epoch + 1, self.global_step, loss, lr, gnorm, sps))
        self.log.record({"type": "train", "epoch": self.epoch + 1, "step": self.global_step, "loss": loss, "lr": lr,
                         "grad_norm": gnorm, "samples_per_s": sps, "time": time.time(), "loss_bins": bins})
        if self.cfg.training.tensorboard:
            self.accelerator.log({"train/loss": loss, "train/lr": lr, "train/grad_norm": gnorm}, step=self.global_step)
        for k in ("loss", "mse_bins", "count_bins", "steps", "grad_norm"):
            self.accum[k].zero_()

    def _diverged(self, loss: float) -> None:
        last = self.last_checkpoint or "none yet"
        raise TrainingDiverged(
            f"loss became {loss} by step {self.global_step} (epoch {self.epoch + 1}); training stopped and no "
            f"checkpoint was written from the diverged weights. Last good checkpoint: {last}. Resume from it with a "
            f"lower learning rate, e.g. --resume latest --set training.learning_rate={self.cfg.training.learning_rate / 2:.1e}"
        )

    @torch.no_grad()
    def validation_loss(self, unet) -> tuple[float, list[float | None]]:
        """Validation objective (weighted like training) and plain MSE per timestep bin, on the held-out
        split with fixed noise and timesteps stratified over [0, T)."""
        cfg = self.cfg
        if len(self.val_idx) == 0:
            return float("nan"), [None] * cfg.training.loss_bins
        reps = cfg.training.val_batches
        idx = torch.as_tensor(np.tile(self.val_idx, reps))
        gen = torch.Generator().manual_seed(cfg.training.seed + 7919)
        T, bins = cfg.noise.num_train_timesteps, cfg.training.loss_bins
        timesteps = stratified_timesteps(len(idx), T, gen)
        res = cfg.data.resolution
        noise = torch.randn((len(idx), 3, res, res), generator=gen)
        unet.eval()
        self.text_encoder.eval()
        sums, counts, weighted = np.zeros(bins), np.zeros(bins), 0.0
        dev = self.accelerator.device
        for start in range(0, len(idx), self.micro):
            sl = slice(start, start + self.micro)
            _, mse = self._loss(unet, idx[sl].to(dev), idx[sl].to(dev), timesteps[sl].to(dev), noise[sl].to(dev))
            weights = loss_weights(self.alphas_cumprod, timesteps[sl].to(dev), cfg.noise.prediction_type, cfg.training.snr_gamma)
            weighted += float((mse * weights).sum())
            which = (timesteps[sl] * bins // T).numpy()
            np.add.at(sums, which, mse.double().cpu().numpy())
            np.add.at(counts, which, 1)
        per_bin = [float(s / c) if c else None for s, c in zip(sums, counts)]
        return weighted / len(idx), per_bin

    def _end_of_epoch(self, epoch_seconds: float) -> dict:
        unet = self.accelerator.unwrap_model(self.unet)
        val, val_bins = self.validation_loss(unet)
        val_ema, val_ema_bins = None, None
        if self.ema is not None:
            self.ema.store(unet.parameters())
            self.ema.copy_to(unet.parameters())
            val_ema, val_ema_bins = self.validation_loss(unet)
            self.ema.restore(unet.parameters())
        a = self.accum
        epoch_loss = self.accelerator.reduce(a["epoch_loss"].clone(), reduction="mean")
        train_loss = epoch_loss.item() / max(1.0, a["epoch_steps"].item())
        if not math.isfinite(train_loss):
            self._diverged(train_loss)
        rec = {"type": "val", "epoch": self.epoch, "step": self.global_step, "train_loss": train_loss, "val_loss": val,
               "val_loss_ema": val_ema, "val_loss_bins": val_bins, "val_loss_ema_bins": val_ema_bins,
               "epoch_seconds": epoch_seconds, "samples_per_s": self.steps_per_epoch * self.cfg.training.batch_size / max(epoch_seconds, 1e-9),
               "num_epochs": self.cfg.training.num_epochs, "lr": self.optimizer.param_groups[0]["lr"], "time": time.time()}
        self.log.info(format_val_line(rec))
        self.log.record(rec)
        a["epoch_loss"].zero_()
        a["epoch_steps"].zero_()
        return rec

    # ------------------------------------------------------------------ checkpoints
    def save(self, end_of_epoch: bool, metrics: dict | None = None) -> Path | None:
        """Write a checkpoint (main process) and rotate old ones; every process waits for it."""
        acc = self.accelerator
        acc.wait_for_everyone()
        name = checkpoint_name(self.epoch) if end_of_epoch else checkpoint_name(self.epoch, self.global_step)
        path = self.out / name
        if self.is_main:
            unet = acc.unwrap_model(self.unet)
            text_encoder = acc.unwrap_model(self.text_encoder)
            state = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                     "lr_segment": self.segment, "world_size": self.world, "data_fingerprint": self.ds.fingerprint,
                     "steps_per_epoch": self.steps_per_epoch,
                     "ema_optimization_step": self.ema.optimization_step if self.ema else None}
            rng = {"torch": torch.get_rng_state(), "accumulators": {k: v.cpu() for k, v in self.accum.items()}}

            def write_parts(folder: Path) -> None:
                save_model_parts(folder, unet, self.ema, text_encoder, self.tokenizer, self.noise_scheduler, self.vocabulary, self.cfg)
                save_training_state(folder, self.optimizer.state_dict(), self.lr_scheduler.state_dict(), rng, state)

            manifest = {"epoch": self.epoch, "global_step": self.global_step, "end_of_epoch": end_of_epoch,
                        "config_hash": self.cfg.hash(), "model_hash": self.cfg.hash(("model", "noise")),
                        "data_fingerprint": self.ds.fingerprint, "versions": _versions(), "metrics": metrics or {}}
            write_checkpoint(self.out, name, write_parts, manifest, [unet, text_encoder, self.ema and unet],
                             self.cfg.training.min_free_disk_mb)
            deleted = rotate_checkpoints(self.out, self.cfg.training.checkpoints_total_limit, self.cfg.milestone_epochs(), keep=path)
            self.log.info(f"saved {path}" + (f"; removed {', '.join(p.name for p in deleted)}" if deleted else ""))
        acc.wait_for_everyone()
        self.last_checkpoint = path
        return path

    # ------------------------------------------------------------------ the loop
    def fit(self, max_steps: int | None = None, stop_at_epoch: int | None = None) -> TrainResult:
        t = self.cfg.training
        stop = {"signal": None}
        previous = {}
        if self.is_main and threading.current_thread() is threading.main_thread():
            def _request_stop(signum, frame):  # finish the step, save a mid-epoch checkpoint, exit
                stop["signal"] = signum
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, _request_stop)
        stopped = "finished"
        try:
            milestones = self.cfg.milestone_epochs()
            interval_start = None
            last_epoch = min(t.num_epochs, stop_at_epoch or t.num_epochs)
            while self.epoch < last_epoch:
                order = epoch_order(self.train_idx, t.seed, self.epoch)
                epoch_start = time.perf_counter()
                if interval_start is None:
                    interval_start = epoch_start
                while self.step_in_epoch < self.steps_per_epoch:
                    self._share_cpu()
                    self.train_step(order, self.step_in_epoch)
                    self.step_in_epoch += 1
                    if self.global_step % t.log_every_n_steps == 0:
                        self._log_interval(time.perf_counter() - interval_start)
                        interval_start = time.perf_counter()
                    self.log.advance(1, self.epoch + 1, None)
                    if max_steps is not None and self.global_step >= max_steps or stop["signal"]:
                        break
                if self.step_in_epoch < self.steps_per_epoch:  # interrupted mid-epoch
                    stopped = "signal" if stop["signal"] else "max_steps"
                    self.save(end_of_epoch=False)
                    return self._result(stopped)
                self.epoch += 1
                self.step_in_epoch = 0
                paused = time.perf_counter()
                rec = self._end_of_epoch(paused - epoch_start)
                is_milestone = self.epoch in milestones
                if self.epoch % t.checkpoint_every_n_epochs == 0 or self.epoch == t.num_epochs or is_milestone or self.epoch == last_epoch:
                    path = self.save(end_of_epoch=True, metrics={k: rec[k] for k in ("train_loss", "val_loss", "val_loss_ema")})
                    if is_milestone and self.is_main and self.on_milestone is not None:
                        child = self.on_milestone(path, self.epoch)
                        if hasattr(child, "poll"):
                            self.background.append(child)
                interval_start += time.perf_counter() - paused  # samples/s counts training time only
                if max_steps is not None and self.global_step >= max_steps:
                    return self._result("max_steps")
            stopped = "stop_at_epoch" if self.epoch < t.num_epochs else "finished"
            return self._result(stopped)
        finally:
            torch.set_num_threads(self.threads)  # background reports may still run; the caller gets its threads back
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.log.close()
            if self.cfg.training.tensorboard:
                self.accelerator.end_training()
            if self.lock:
                release_lock(self.lock)

    def _result(self, stopped: str) -> TrainResult:
        self.log.info(f"stopped ({stopped}) at epoch {self.epoch}, step {self.global_step}; last checkpoint {self.last_checkpoint}")
        return TrainResult(self.out, self.epoch, self.global_step, self.last_checkpoint, stopped)


def _versions() -> dict[str, str]:
    import accelerate
    import diffusers
    import transformers

    return {"t2ilab": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__}


def train(cfg: Config, resume: str | None = None, max_steps: int | None = None, stop_at_epoch: int | None = None,
          progress: str = "auto", on_milestone=None, overwrite: bool = False) -> TrainResult:
    """Train (or resume) the run described by `cfg`; returns where it stopped."""
    trainer = Trainer(cfg, resume=resume, progress=progress, on_milestone=on_milestone, overwrite=overwrite)
    return trainer.fit(max_steps, stop_at_epoch)


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
            from t2ilab.reports import start_background_reports
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
