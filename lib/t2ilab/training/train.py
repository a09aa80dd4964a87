"""The training loop: accelerate for devices and precision, EMA, Min-SNR, caption dropout, exact resume.

Randomness is a pure function of (seed, global step): the noise, timesteps and caption dropout of step s
come from a generator seeded with (seed, s), and the data order of epoch e from a permutation seeded with
(seed, e). So the position in a run is just (epoch, batch index), and a resumed run repeats nothing and
skips nothing; on CPU it is bit-identical to an uninterrupted one. Set-up lives in training_setup.py, the loss
in losses.py, reports beside training in background.py, Ctrl-C handling in stop_signals.py.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from t2ilab import __version__
from t2ilab.config import Config, load_config
from t2ilab.datasets.data import dataset_ids, load_dataset, split_change
from t2ilab.training import validation
from t2ilab.training.background import BackgroundReports
from t2ilab.training.batches import draw_batch, epoch_order, step_generator  # noqa: F401  (re-exported)
from t2ilab.training.checkpoint import (
    checkpoint_name,
    library_versions,
    load_training_state,
    quiet_hub_progress,
    read_manifest,
    remove_stale_temporaries,
    resolve_checkpoint,
    rotate_checkpoints,
    save_model_parts,
    save_training_state,
    write_checkpoint,
)
from t2ilab.training.latent_space import check_same_vae
from t2ilab.training.losses import is_flow_matching, per_sample_loss
from t2ilab.training.model import build_noise_scheduler, build_unet
from t2ilab.training.representation import image_space
from t2ilab.training.resume import ResumePlan, build_lr_scheduler, fresh_segment, plan_resume
from t2ilab.training.runlog import RunLog, acquire_lock, format_train_line, format_val_line, release_lock
from t2ilab.training.step_stats import StepStats
from t2ilab.training.stop_signals import StopRequests
from t2ilab.training.text import caption_vocabulary, tokenize
from t2ilab.training.training_setup import (
    build_ema,
    build_optimizer,
    check_output_dir,
    check_restart,
    check_split,
    in_the_way,
    load_text_side,
    load_weights,
    micro_batch,
    mixed_precision,
)

__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "epoch_order", "mixed_precision", "step_generator", "train"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf."""


@dataclass
class TrainResult:
    output_dir: Path
    epoch: int
    global_step: int
    last_checkpoint: Path | None
    stopped: str  # "finished" | "max_steps" | "stop_at_epoch" | "signal"


class Trainer:
    """One run: set-up, the loop, validation and checkpoints. Use `train()` for the whole thing."""

    def __init__(self, cfg: Config, resume: str | None = None, progress: str = "auto", on_milestone=None,
                 overwrite: bool = False):
        self.cfg, t = cfg, cfg.training
        self.out = Path(cfg.output_dir)
        self.accelerator = acc = Accelerator(
            mixed_precision=mixed_precision(cfg),
            cpu=not torch.cuda.is_available(),  # lets `accelerate launch --multi_gpu`/torchrun use gloo on CPUs
            log_with="tensorboard" if t.tensorboard else None,
            project_dir=str(self.out),
        )
        self.is_main, self.world = acc.is_main_process, acc.num_processes
        self.micro = micro_batch(cfg, self.world)
        check_output_dir(self.out)
        self.lock = acquire_lock(self.out) if self.is_main else None
        self.reports = BackgroundReports(on_milestone if self.is_main else None, acc.device.type == "cpu")
        try:
            self._build(resume, progress, overwrite)
        except BaseException:
            if self.lock:
                release_lock(self.lock)
            raise

    # ------------------------------------------------------------------ set-up
    def _build(self, resume: str | None, progress: str, overwrite: bool) -> None:
        cfg, t, acc = self.cfg, self.cfg.training, self.accelerator
        quiet_hub_progress()
        if self.is_main:
            remove_stale_temporaries(self.out)
        self.ds = load_dataset(cfg.data)
        self.space = image_space(cfg)
        self.train_idx, self.val_idx = self.ds.train_idx, self.ds.val_idx
        self.steps_per_epoch = check_split(cfg, len(self.ds.captions), len(self.train_idx), len(self.val_idx))
        ckpt = resolve_checkpoint(resume, self.out) if resume else None
        check_restart(cfg, ckpt)
        if ckpt is not None:  # before the config diff, so a changed VAE gets a message naming both
            check_same_vae(ckpt, read_manifest(ckpt).get("vae"), self.space.identity, "resume")
        discard = in_the_way(self.out, ckpt, overwrite)
        torch.manual_seed(t.seed)  # model initialisation is the only use of the global RNG
        captions = [self.ds.captions[i] for i in self.train_idx]
        self.text_encoder, self.tokenizer, self.text_trainable = load_text_side(cfg, ckpt, captions)
        with warnings.catch_warnings():  # the tokenizer has said so already when the vocabulary is capped
            warnings.simplefilter("ignore")
            self.vocabulary = caption_vocabulary(captions, cfg.model.max_caption_tokens)
        self.noise_scheduler = build_noise_scheduler(cfg.noise, steps_offset=1 if cfg.model.vae else 0)
        make_unet = lambda: build_unet(cfg.model, self.space.sample_size, self.text_encoder.config.hidden_size,  # noqa: E731
                                       self.space.channels)
        self.unet = make_unet()
        self.plan: ResumePlan | None = None
        self.split_line = None
        resumed = load_training_state(ckpt) if ckpt is not None else None  # (optimizer, lr scheduler, rng, state)
        state = resumed[3] if resumed else {}
        if ckpt is not None:
            old_cfg = load_config(ckpt / "config.yaml")
            self.plan = plan_resume(ckpt, state, old_cfg, cfg, self.ds.fingerprint, self.steps_per_epoch,
                                    resumed[0]["param_groups"][0]["lr"], self.world)
            load_weights(self.unet, ckpt / "unet", "UNet")
            old_fingerprint = state.get("data_fingerprint")  # a grown or shrunk data set: say where new images went
            if old_fingerprint != self.ds.fingerprint:
                self.split_line = split_change(dataset_ids(old_cfg.data, old_fingerprint), self.ds,
                                               cfg.data.val_fraction, cfg.data.seed)
        self.ema = build_ema(cfg, self.unet, ckpt, state, make_unet)
        params = list(self.unet.parameters()) + (list(self.text_encoder.parameters()) if self.text_trainable else [])
        if not self.text_trainable:
            self.text_encoder.requires_grad_(False)
        self.optimizer = build_optimizer(cfg, params, acc.device)
        sums = self._restore_position(resumed)
        self.stats = StepStats(t.loss_bins, cfg.noise.num_train_timesteps, sums)
        self.last_checkpoint = ckpt
        self._to_device()
        if discard and self.is_main:  # --overwrite, and every check above passed: discard what it names
            for path in discard:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.log = RunLog(self.out, t.num_epochs * self.steps_per_epoch, self.global_step, self.is_main, progress)
        self.reports.log = self.log
        if self.log.repaired:
            self.log.info(f"metrics.jsonl ended in a partial line (a run stopped mid-write); cut off, kept here: {self.log.repaired}")
        if t.tensorboard:
            acc.init_trackers("t2ilab")
        self._announce()

    def _restore_position(self, resumed) -> dict | None:
        """Optimizer, LR schedule, position and RNG: the checkpoint's, as the resume plan says, or a fresh run's.

        Returns the checkpoint's running log sums when they continue exactly (None: start them empty)."""
        if resumed is None:
            self.segment = fresh_segment(self.cfg, self.steps_per_epoch)
            self.lr_scheduler = build_lr_scheduler(self.optimizer, self.segment)
            self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
            return None
        state_opt, state_sched, rng, _ = resumed
        self.optimizer.load_state_dict(state_opt)
        self.segment = self.plan.lr_segment
        self.lr_scheduler = build_lr_scheduler(self.optimizer, self.segment)
        if not self.plan.new_segment:
            self.lr_scheduler.load_state_dict(state_sched)
            for group, lr in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr()):
                group["lr"] = lr
        self.epoch, self.step_in_epoch, self.global_step = self.plan.epoch, self.plan.step_in_epoch, self.plan.global_step
        torch.set_rng_state(rng["torch"])
        # Running log sums continue exactly unless the plan changed the run (then they restart empty).
        return {k: v.clone() for k, v in rng["accumulators"].items()} if not self.plan.warnings else None

    def _to_device(self) -> None:
        """Everything the loop touches lives on the device once: uint8 images (or their latents), token ids, the models."""
        acc, dev = self.accelerator, self.accelerator.device
        self.images = self.space.cache(self.ds, self.cfg.data.cache_dir, dev).to(dev)
        all_ids = tokenize(self.tokenizer, self.ds.captions + [""], self.cfg.model.max_caption_tokens)
        self.input_ids, self.attn_mask = all_ids["input_ids"].to(dev), all_ids["attention_mask"].to(dev)
        self.empty_row = len(self.ds.captions)  # the "" caption that caption dropout swaps in
        flow = is_flow_matching(self.noise_scheduler)
        self.alphas_cumprod = None if flow else self.noise_scheduler.alphas_cumprod.to(dev)
        if self.text_trainable:
            self.unet, self.text_encoder, self.optimizer = acc.prepare(self.unet, self.text_encoder, self.optimizer)
            self.cached_embeddings = None
        else:
            self.unet, self.optimizer = acc.prepare(self.unet, self.optimizer)
            self.text_encoder.to(dev)
            self.cached_embeddings = self._embed_all()  # a frozen encoder's outputs never change: compute once
        if self.ema is not None:
            self.ema.to(dev)

    def _embed_all(self) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.text_encoder(input_ids=self.input_ids[i:i + 256], attention_mask=self.attn_mask[i:i + 256]).last_hidden_state
                              for i in range(0, len(self.input_ids), 256)])

    def _announce(self) -> None:
        cfg = self.cfg
        n_unet = sum(p.numel() for p in self.accelerator.unwrap_model(self.unet).parameters())
        n_text = sum(p.numel() for p in self.text_encoder.parameters())
        self.log.info(
            f"t2ilab {__version__}: {len(self.train_idx)} train / {len(self.val_idx)} val images at {cfg.data.resolution}px "
            f"({cfg.data.source}); UNet {n_unet / 1e6:.2f} M params, text encoder {n_text / 1e6:.2f} M "
            f"({'trained' if self.text_trainable else 'frozen'}); {self.space.describe()}; {self.steps_per_epoch} steps/epoch, batch "
            f"{cfg.training.batch_size} on {self.world} process(es), device {self.accelerator.device}, "
            f"precision {mixed_precision(cfg)}"
        )
        for line in (self.plan.render().splitlines() if self.plan is not None else []) + ([self.split_line] if self.split_line else []):
            self.log.info(line)

    # ------------------------------------------------------------------ one step
    def _batch(self, order: np.ndarray, index: int):
        """This process's slice of the step's global batch and its random draws (batches.py)."""
        return draw_batch(self.cfg, self.space, order, index, self.global_step, self.world,
                          self.accelerator.process_index, self.empty_row, self.accelerator.device)

    def forward_loss(self, unet, idx, rows, timesteps, noise) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample MSE and Min-SNR weight of images `idx` with captions `rows` at `timesteps`."""
        clean = self.space.model_input(self.images[idx])
        with self.accelerator.autocast():
            if self.cached_embeddings is not None:
                encoder_hidden_states = self.cached_embeddings[rows]
            else:
                encoder_hidden_states = self.text_encoder(input_ids=self.input_ids[rows], attention_mask=self.attn_mask[rows]).last_hidden_state
        return per_sample_loss(unet, self.noise_scheduler, clean, noise, timesteps, encoder_hidden_states,
                               self.alphas_cumprod, self.cfg.training.snr_gamma, self.accelerator.autocast,
                               self.cfg.model.coord_channels)

    def train_step(self, order: np.ndarray, index: int) -> None:
        """One optimiser step on batch `index` of `order`, over gradient-accumulation micro-batches."""
        t, acc = self.cfg.training, self.accelerator
        idx, rows, timesteps, noise = self._batch(order, index)
        self.unet.train()
        self.text_encoder.train(self.text_trainable)
        n_micro = t.gradient_accumulation_steps
        step_loss = torch.zeros((), device=acc.device)
        mses = []
        for m in range(n_micro):
            part = slice(m * self.micro, (m + 1) * self.micro)
            with nullcontext() if m == n_micro - 1 else acc.no_sync(self.unet):  # all-reduce on the last only
                mse, weights = self.forward_loss(self.unet, idx[part], rows[part], timesteps[part], noise[part])
                loss = (mse * weights).mean()
                acc.backward(loss / n_micro)
            step_loss += loss.detach() / n_micro
            mses.append(mse.detach())
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = acc.clip_grad_norm_(params, t.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(acc.unwrap_model(self.unet).parameters())
        self.global_step += 1
        self.stats.add(step_loss, torch.cat(mses), timesteps, grad_norm)

    # ------------------------------------------------------------------ logging and validation
    def _log_interval(self, seconds: float) -> None:
        s = self.stats.read_interval(self.accelerator)  # averaged over processes: the global numbers
        if not math.isfinite(s["loss"]):
            self._diverged(s["loss"])
        lr = self.optimizer.param_groups[0]["lr"]
        sps = s["steps"] * self.cfg.training.batch_size / max(seconds, 1e-9)
        self.log.info(format_train_line(self.epoch + 1, self.global_step, s["loss"], lr, s["grad_norm"], sps))
        self.log.record({"type": "train", "epoch": self.epoch + 1, "step": self.global_step, "loss": s["loss"], "lr": lr,
                         "grad_norm": s["grad_norm"], "samples_per_s": sps, "time": time.time(), "loss_bins": s["loss_bins"]})
        if self.cfg.training.tensorboard:
            self.accelerator.log({"train/loss": s["loss"], "train/lr": lr, "train/grad_norm": s["grad_norm"]}, step=self.global_step)

    def _diverged(self, loss: float) -> None:
        raise TrainingDiverged(
            f"loss became {loss} by step {self.global_step} (epoch {self.epoch + 1}); training stopped and no "
            f"checkpoint was written from the diverged weights. Last good checkpoint: {self.last_checkpoint or 'none yet'}. "
            f"Resume from it with a lower learning rate, e.g. --resume latest --set "
            f"training.learning_rate={self.cfg.training.learning_rate / 2:.1e}"
        )

    def validation_loss(self, unet) -> tuple[float, list[float | None]]:
        """Validation objective (weighted like training) and plain MSE per timestep bin (validation.py)."""
        unet.eval()
        self.text_encoder.eval()
        cfg = self.cfg
        return validation.validation_loss(lambda *batch: self.forward_loss(unet, *batch), self.val_idx, self.space.noise_shape,
                                          cfg.training.seed, cfg.training.val_batches, cfg.noise.num_train_timesteps,
                                          cfg.training.loss_bins, self.micro, self.accelerator.device,
                                          continuous=cfg.noise.objective == "flow_matching")

    def _end_of_epoch(self, epoch_seconds: float) -> dict:
        unet = self.accelerator.unwrap_model(self.unet)
        val, val_bins = self.validation_loss(unet)
        val_ema, val_ema_bins = None, None
        if self.ema is not None:
            self.ema.store(unet.parameters())
            self.ema.copy_to(unet.parameters())
            val_ema, val_ema_bins = self.validation_loss(unet)
            self.ema.restore(unet.parameters())
        train_loss = self.stats.read_epoch(self.accelerator)
        if not math.isfinite(train_loss):
            self._diverged(train_loss)
        rec = {"type": "val", "epoch": self.epoch, "step": self.global_step, "train_loss": train_loss, "val_loss": val,
               "val_loss_ema": val_ema, "val_loss_bins": val_bins, "val_loss_ema_bins": val_ema_bins,
               "epoch_seconds": epoch_seconds, "samples_per_s": self.steps_per_epoch * self.cfg.training.batch_size / max(epoch_seconds, 1e-9),
               "num_epochs": self.cfg.training.num_epochs, "lr": self.optimizer.param_groups[0]["lr"], "time": time.time()}
        self.log.info(format_val_line(rec))
        self.log.record(rec)
        return rec

    # ------------------------------------------------------------------ checkpoints
    def save(self, end_of_epoch: bool, metrics: dict | None = None) -> Path | None:
        """Write a checkpoint (main process) and rotate old ones; every process waits for it."""
        acc = self.accelerator
        acc.wait_for_everyone()
        name = checkpoint_name(self.epoch) if end_of_epoch else checkpoint_name(self.epoch, self.global_step)
        path = self.out / name
        if self.is_main:
            unet, text_encoder = acc.unwrap_model(self.unet), acc.unwrap_model(self.text_encoder)
            state = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                     "lr_segment": self.segment, "world_size": self.world, "data_fingerprint": self.ds.fingerprint,
                     "steps_per_epoch": self.steps_per_epoch,
                     "ema_optimization_step": self.ema.optimization_step if self.ema else None}
            rng = {"torch": torch.get_rng_state(), "accumulators": self.stats.state()}

            def write_parts(folder: Path) -> None:
                save_model_parts(folder, unet, self.ema, text_encoder, self.tokenizer, self.noise_scheduler, self.vocabulary, self.cfg)
                save_training_state(folder, self.optimizer.state_dict(), self.lr_scheduler.state_dict(), rng, state)

            manifest = {"epoch": self.epoch, "global_step": self.global_step, "end_of_epoch": end_of_epoch,
                        "config_hash": self.cfg.hash(), "model_hash": self.cfg.hash(("model", "noise")),
                        "data_fingerprint": self.ds.fingerprint, "versions": library_versions(), "metrics": metrics or {}}
            if self.space.identity is not None:
                manifest["vae"] = self.space.identity  # its weights stay where model.vae points; sampling checks the hash
            write_checkpoint(self.out, name, write_parts, manifest, [unet, text_encoder, self.ema and unet],
                             self.cfg.training.min_free_disk_mb)
            deleted = rotate_checkpoints(self.out, self.cfg.training.checkpoints_total_limit, self.cfg.milestone_epochs(), keep=path)
            self.log.info(f"saved {path}" + (f"; removed {', '.join(p.name for p in deleted)}" if deleted else ""))
        acc.wait_for_everyone()
        self.last_checkpoint = path
        return path

    # ------------------------------------------------------------------ the loop
    def fit(self, max_steps: int | None = None, stop_at_epoch: int | None = None) -> TrainResult:
        """Train to num_epochs (or stop_at_epoch / max_steps / a signal), checkpointing as the config says."""
        t = self.cfg.training
        milestones = self.cfg.milestone_epochs()
        last_epoch = min(t.num_epochs, stop_at_epoch or t.num_epochs)
        interval_start = time.perf_counter()
        try:
            with StopRequests(enabled=self.is_main) as stop:
                while self.epoch < last_epoch:
                    order = epoch_order(self.train_idx, t.seed, self.epoch)
                    epoch_start = time.perf_counter()
                    while self.step_in_epoch < self.steps_per_epoch:
                        self.reports.share_cpu()
                        self.train_step(order, self.step_in_epoch)
                        self.step_in_epoch += 1
                        if self.global_step % t.log_every_n_steps == 0:
                            self._log_interval(time.perf_counter() - interval_start)
                            interval_start = time.perf_counter()
                        self.log.advance(1, self.epoch + 1, None)
                        if max_steps is not None and self.global_step >= max_steps or stop.signal:
                            break
                    if self.step_in_epoch < self.steps_per_epoch:  # interrupted mid-epoch
                        self.save(end_of_epoch=False)
                        return self._result("signal" if stop.signal else "max_steps")
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
                    paused = time.perf_counter()
                    rec = self._end_of_epoch(paused - epoch_start)
                    if self.epoch % t.checkpoint_every_n_epochs == 0 or self.epoch in (t.num_epochs, last_epoch) or self.epoch in milestones:
                        path = self.save(end_of_epoch=True, metrics={k: rec[k] for k in ("train_loss", "val_loss", "val_loss_ema")})
                        if self.epoch in milestones:
                            self.reports.milestone(path, self.epoch)
                    interval_start += time.perf_counter() - paused  # samples/s counts training time only
                    if max_steps is not None and self.global_step >= max_steps:
                        return self._result("max_steps")
            return self._result("stop_at_epoch" if self.epoch < t.num_epochs else "finished")
        finally:
            self.reports.restore()
            self.log.close()
            if t.tensorboard:
                self.accelerator.end_training()
            if self.lock:
                release_lock(self.lock)

    def _result(self, stopped: str) -> TrainResult:
        self.log.info(f"stopped ({stopped}) at epoch {self.epoch}, step {self.global_step}; last checkpoint {self.last_checkpoint}")
        return TrainResult(self.out, self.epoch, self.global_step, self.last_checkpoint, stopped)


def train(cfg: Config, resume: str | None = None, max_steps: int | None = None, stop_at_epoch: int | None = None,
          progress: str = "auto", on_milestone=None, overwrite: bool = False) -> TrainResult:
    """Train (or resume) the run described by `cfg`; returns where it stopped."""
    trainer = Trainer(cfg, resume=resume, progress=progress, on_milestone=on_milestone, overwrite=overwrite)
    return trainer.fit(max_steps, stop_at_epoch)
