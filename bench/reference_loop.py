"""The reference training step: diffusers' examples/text_to_image/train_text_to_image.py transcribed to pixel space
(latents = pixels, no VAE), with torchvision's transforms written out in PIL + torch (torchvision is not installed).

Deliberate differences, all generous to the reference or needed for equal work: images are PIL.Image objects held in
memory (no decoding from disk); captions use t2ilab's fast word-level tokenizer (the script's CLIPTokenizer is the
slow Python one); the text encoder is the same scratch CLIPTextModel as t2ilab's and is trained too (the script
freezes its pretrained one), so both sides update the same parameters and clip their gradients together.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from PIL import Image
from t2ilab.training.model import build_noise_scheduler, build_unet
from t2ilab.training.text import build_text_encoder
from t2ilab.training.train import mixed_precision


def resize(img: Image.Image, size: int) -> Image.Image:
    """transforms.Resize(size, BILINEAR): shorter side to `size`; torchvision returns the image when it fits."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    if short == size:
        return img
    new_long = int(size * long / short)
    return img.resize((size, new_long) if w <= h else (new_long, size), Image.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """transforms.CenterCrop(size) on a PIL image."""
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_tensor_normalized(img: Image.Image) -> torch.Tensor:
    """transforms.ToTensor() then transforms.Normalize([0.5], [0.5])."""
    t = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(img.size[1], img.size[0], 3)
    t = t.permute(2, 0, 1).contiguous().to(torch.get_default_dtype()).div(255)
    return t.clone().sub_(torch.as_tensor([0.5]).view(-1, 1, 1)).div_(torch.as_tensor([0.5]).view(-1, 1, 1))


class PILCaptionDataset(torch.utils.data.Dataset):
    """The rendered shapes as PIL images in memory (no decoding: generous to the reference); per item the
    script's preprocess_train: convert("RGB"), the transforms, and caption tokenization."""

    def __init__(self, images_uint8: torch.Tensor, captions: list[str], tokenizer, resolution: int, max_length: int):
        self.images = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images_uint8]
        self.captions, self.tokenizer, self.resolution, self.max_length = captions, tokenizer, resolution, max_length

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i].convert("RGB")
        pixel_values = to_tensor_normalized(center_crop(resize(image, self.resolution), self.resolution))
        input_ids = self.tokenizer([self.captions[i]], max_length=self.max_length, padding="max_length",
                                   truncation=True, return_tensors="pt").input_ids
        return {"pixel_values": pixel_values, "input_ids": input_ids[0]}


def collate_fn(examples: list[dict]) -> dict:
    pixel_values = torch.stack([e["pixel_values"] for e in examples])
    pixel_values = pixel_values.to(memory_format=torch.contiguous_format).float()
    return {"pixel_values": pixel_values, "input_ids": torch.stack([e["input_ids"] for e in examples])}


class ReferenceLoop:
    """The script's training step with latents = pixels (no VAE) and the text encoder trained too."""

    def __init__(self, cfg, ds):
        a = self.args = cfg.training
        # The Trainer's precision (bf16 on CUDA, fp32 on CPU): the script's --mixed_precision, same on both sides.
        self.acc = Accelerator(gradient_accumulation_steps=1, mixed_precision=mixed_precision(cfg), cpu=not torch.cuda.is_available())
        torch.manual_seed(a.seed)  # the same initial weights as the Trainer's
        captions = [ds.captions[i] for i in ds.train_idx]
        text_encoder, tokenizer, _ = build_text_encoder(cfg.model, captions)
        unet = build_unet(cfg.model, cfg.data.resolution, text_encoder.config.hidden_size)
        self.noise_scheduler = build_noise_scheduler(cfg.noise)
        self.ema_unet = EMAModel(unet.parameters(), model_cls=UNet2DConditionModel, model_config=unet.config)  # foreach=False
        self.params = list(unet.parameters()) + list(text_encoder.parameters())
        optimizer = torch.optim.AdamW(self.params, lr=a.learning_rate, betas=(a.adam_beta1, a.adam_beta2),
                                      weight_decay=a.adam_weight_decay, eps=a.adam_epsilon)
        dataset = PILCaptionDataset(ds.images[ds.train_idx], captions, tokenizer, cfg.data.resolution, cfg.model.max_caption_tokens)
        loader = torch.utils.data.DataLoader(dataset, shuffle=True, collate_fn=collate_fn, batch_size=a.batch_size, num_workers=0)
        lr_scheduler = get_scheduler(a.lr_scheduler, optimizer=optimizer, num_warmup_steps=a.lr_warmup_steps,
                                     num_training_steps=a.num_epochs * len(loader))
        self.unet, self.text_encoder, self.optimizer, self.loader, self.lr_scheduler = self.acc.prepare(
            unet, text_encoder, optimizer, loader, lr_scheduler)
        self.ema_unet.to(self.acc.device)
        self.unet.train()
        self.text_encoder.train()
        self.batches, self.global_step, self.train_loss = iter(self.loader), 0, 0.0

    def _next_batch(self) -> dict:
        try:
            return next(self.batches)
        except StopIteration:  # a new epoch: the script's outer loop re-enters the dataloader
            self.batches = iter(self.loader)
            return next(self.batches)

    def run(self, steps: int) -> int:
        samples = 0
        for _ in range(steps):
            samples += self.step(self._next_batch())
        return samples

    def step(self, batch: dict) -> int:
        acc, args, sched = self.acc, self.args, self.noise_scheduler
        with acc.accumulate(self.unet):
            latents = batch["pixel_values"]  # pixel space: vae.encode(...) * scaling_factor is the identity here
            noise = torch.randn_like(latents)
            bsz = latents.shape[0]
            timesteps = torch.randint(0, sched.config.num_train_timesteps, (bsz,), device=latents.device).long()
            noisy_latents = sched.add_noise(latents, noise, timesteps)
            encoder_hidden_states = self.text_encoder(batch["input_ids"])[0]
            if sched.config.prediction_type == "epsilon":
                target = noise
            else:
                target = sched.get_velocity(latents, noise, timesteps)
            model_pred = self.unet(noisy_latents, timesteps, encoder_hidden_states).sample
            if args.snr_gamma is None:
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            else:  # the script's Min-SNR path: min(snr', gamma) / snr' with snr' = snr + 1 for v-prediction
                snr = compute_snr(sched, timesteps)
                if sched.config.prediction_type == "v_prediction":
                    snr = snr + 1
                mse_loss_weights = torch.stack([snr, args.snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
                loss = loss.mean(dim=list(range(1, len(loss.shape)))) * mse_loss_weights
                loss = loss.mean()
            avg_loss = acc.gather(loss.repeat(bsz)).mean()
            self.train_loss += avg_loss.item()
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(self.params, args.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
        if acc.sync_gradients:
            self.ema_unet.step(self.unet.parameters())
            self.global_step += 1
            acc.log({"train_loss": self.train_loss}, step=self.global_step)
            self.train_loss = 0.0
        _logs = {"step_loss": loss.detach().item(), "lr": self.lr_scheduler.get_last_lr()[0]}
        return bsz
