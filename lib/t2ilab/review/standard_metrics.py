"""Standard metrics from weights already on the machine (never downloaded): CLIP score with transformers' CLIPModel,
FID and KID through torchmetrics on Inception or any other TorchScript feature extractor; each with its N and an
interval, or one sentence saying exactly what to put where.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

INCEPTION_SIZE = 299  # the side Inception v3 reads; clean-fid / StyleGAN's TorchScript file resizes to it too
NEVER_DOWNLOADS = "t2ilab never downloads weights"


class MetricUnavailable(RuntimeError):
    """A metric cannot run here; the message names the config key, the path and what to put there."""


def not_configured(key: str, what: str, example: str) -> str:
    """The sentence shown when reports.<key> is not set."""
    return (f"{what} not configured: set reports.{key} (or `t2ilab report --set quality_review.{key}=...`) to "
            f"{example}; {NEVER_DOWNLOADS}.")


CLIP_EXAMPLE = ("a local CLIP folder (written by CLIPModel.save_pretrained and CLIPProcessor.save_pretrained) or a "
                "hub id already in your Hugging Face cache, e.g. openai/clip-vit-base-patch32")
INCEPTION_EXAMPLE = ("a TorchScript Inception file such as inception-2015-12-05.pt, the one clean-fid and StyleGAN "
                     "use (clean-fid keeps it in its cache folder after its first run)")
EXTRACTOR_EXAMPLE = ("a TorchScript feature model (.pt from torch.jit.save) that maps float images (N, 3, H, W) in "
                     "[0, 1] to features (N, d)")


def load_clip(name: str):
    """(CLIPModel, CLIPProcessor) from a folder or a hub id in the local cache; MetricUnavailable otherwise."""
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging

    logging.disable_progress_bar()  # a report shows results, not "Loading weights: 100%"
    folder = Path(name).expanduser()
    try:
        model = CLIPModel.from_pretrained(name, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(name, local_files_only=True)
    except Exception as exc:  # OSError for a missing folder or cache entry, ValueError for a half-written one
        if folder.exists():
            where = f"is a folder transformers cannot load as CLIP ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        else:
            where = f"is neither a folder (nothing at {folder.resolve()}) nor a model in the local Hugging Face cache"
        raise MetricUnavailable(f"CLIP score unavailable: reports.clip_model={name!r} {where}. Put {CLIP_EXAMPLE} "
                                f"there, or point reports.clip_model at where it is; {NEVER_DOWNLOADS}.") from None
    return model.eval(), processor


@torch.no_grad()
def clip_scores(model, processor, images: np.ndarray, captions: list[str], batch_size: int = 64) -> np.ndarray:
    """Per image: 100 * max(cos(image embedding, caption embedding), 0), the CLIPScore of torchmetrics."""
    # Hessel et al. 2021 (https://arxiv.org/abs/2104.08718) scale by 2.5; torchmetrics' 100 is the common reading.
    if len(images) != len(captions):
        raise ValueError(f"clip_scores needs one caption per image, got {len(images)} images, {len(captions)} captions")
    out = []
    for start in range(0, len(images), batch_size):
        batch = processor(text=captions[start : start + batch_size], images=list(images[start : start + batch_size]),
                          return_tensors="pt", padding=True, truncation=True)
        image = model.get_image_features(pixel_values=batch["pixel_values"])
        text = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        image, text = (getattr(x, "pooler_output", x) for x in (image, text))  # a tensor, or an output object
        cos = F.cosine_similarity(image.float(), text.float(), dim=-1)
        out.append((100 * cos.clamp_min(0)).numpy())
    return np.concatenate(out).astype(np.float64)


def mean_interval(values: np.ndarray, bounds: tuple[float, float] = (0.0, 100.0)) -> dict:
    """Mean, 95 % t interval (clipped to the score's range) and n of per-image scores."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2 or values.std() == 0:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": len(values)}
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    return {"mean": mean, "ci_low": float(max(low, bounds[0])), "ci_high": float(min(high, bounds[1])), "n": len(values)}


class TorchScriptFeatures(nn.Module):
    """uint8 (N, 3, H, W) images -> (N, d) features of a TorchScript model (Inception, or another extractor)."""

    def __init__(self, module: torch.jit.ScriptModule, size: int | None, inception: bool):
        super().__init__()
        self.module, self.size, self.inception = module, size, inception
        names = [a.name for a in module.forward.schema.arguments] if hasattr(module.forward, "schema") else []
        self.return_features = "return_features" in names  # clean-fid / StyleGAN's Inception: pool3 features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        x = x if self.inception else x / 255.0  # Inception's TorchScript takes 0..255; other extractors 0..1
        if self.size and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        features = self.module(x, return_features=True) if self.return_features else self.module(x)
        return features.reshape(len(x), -1).to(torch.float32)


def load_extractor(path: str, key: str, size: int | None = None) -> TorchScriptFeatures:
    """A TorchScript feature model from a local file; MetricUnavailable names reports.<key> and the path."""
    inception = key == "inception_weights"
    what, example = ("FID/KID (Inception)", INCEPTION_EXAMPLE) if inception else ("FID/KID (feature extractor)", EXTRACTOR_EXAMPLE)
    file = Path(path).expanduser()
    if not file.is_file():
        raise MetricUnavailable(f"{what} unavailable: reports.{key}={path!r} "
                                f"{'is a folder' if file.is_dir() else 'does not exist'}; put {example} at {file}, "
                                f"or point reports.{key} at where it is; {NEVER_DOWNLOADS}.")
    try:
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": the Inception files people have are TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(file), map_location="cpu").eval()
    except Exception as exc:
        raise MetricUnavailable(f"{what} unavailable: reports.{key}={path!r} is not a TorchScript file "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); it must be {example}.") from None
    return TorchScriptFeatures(module, INCEPTION_SIZE if inception else size, inception)


@torch.no_grad()
def extract(extractor: nn.Module, images: np.ndarray, batch_size: int = 32) -> torch.Tensor:
    """Features (N, d) float64 of uint8 (N, H, W, 3) images."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return torch.cat([extractor(chunk) for chunk in pixels.split(batch_size)]).double()


class _Precomputed(nn.Module):
    """The `feature=` module handed to torchmetrics when the features are already computed: it passes them on."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_kid(real: torch.Tensor, generated: torch.Tensor, bootstrap: int = 20, seed: int = 0) -> dict:
    """FID (with a bootstrap 95 % interval) and KID (mean, std over subsets) of two feature sets, via torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    dim = real.shape[1]

    def fid(a: torch.Tensor, b: torch.Tensor) -> float:
        metric = FrechetInceptionDistance(feature=_Precomputed(dim)).set_dtype(torch.float64)
        metric.update(a, real=True)
        metric.update(b, real=False)
        return float(metric.compute())

    value = fid(real, generated)
    rng = np.random.default_rng([seed, 3])
    # Both sets resampled with replacement; duplicates shrink the covariances, so the interval describes the
    # estimator's spread at this N rather than covering the N -> infinity FID.
    draws = [fid(real[rng.integers(len(real), size=len(real))], generated[rng.integers(len(generated), size=len(generated))])
             for _ in range(bootstrap)]
    low, high = (np.percentile(draws, [2.5, 97.5]) if draws else (None, None))
    subset = min(1000, len(real), len(generated))
    with warnings.catch_warnings():  # "will save all extracted features": that is the point here, they are few
        warnings.simplefilter("ignore", UserWarning)
        kid_metric = KernelInceptionDistance(feature=_Precomputed(dim), subsets=100, subset_size=subset)
    kid_metric.update(real, real=True)
    kid_metric.update(generated, real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from torch's global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = (float(x) for x in kid_metric.compute())
    return {"fid": {"value": value, "ci_low": None if low is None else float(low),
                    "ci_high": None if high is None else float(high), "bootstrap": bootstrap},
            "kid": {"mean": kid_mean, "std": kid_std, "subsets": 100, "subset_size": subset},
            "n_real": len(real), "n_generated": len(generated), "feature_dim": dim}


def too_few(label: str, metric: str, have: int, need: int) -> str | None:
    """'too few held-out images for KID (have 5, need >= 20)', or None when there are enough."""
    return f"too few {label} images for {metric} (have {have}, need >= {need})" if have < need else None


def standard_metrics(settings: dict, generated: np.ndarray, captions: list[str], real: np.ndarray,
                     real_captions: list[str], label: str = "held-out", seed: int = 0) -> dict:
    """CLIP score (generated and real images), FID/KID on Inception and on the feature extractor: results or messages.

    `settings`: clip_model, inception_weights, feature_extractor, feature_extractor_size, min_images, bootstrap
    (reports.* of the run config, or the notebook's parameters). Nothing here ever fails the review: a metric that
    cannot run becomes {"status": ..., "message": ...}.
    """
    out = {"clip_score": _clip(settings, generated, captions, real, real_captions)}
    for key, what, example in (("inception_weights", "FID/KID (Inception)", INCEPTION_EXAMPLE),
                               ("feature_extractor", "FID/KID (feature extractor)", EXTRACTOR_EXAMPLE)):
        path = settings.get(key)
        if not path:
            out[key] = {"status": "not configured", "message": not_configured(key, what, example)}
            continue
        short = too_few(label, "FID and KID", min(len(real), len(generated)), settings.get("min_images", 20))
        if short:
            out[key] = {"status": "too few images", "message": short, "n_real": len(real), "n_generated": len(generated)}
            continue
        try:
            extractor = load_extractor(path, key, settings.get("feature_extractor_size"))
            result = fid_kid(extract(extractor, real), extract(extractor, generated), settings.get("bootstrap", 20), seed)
            out[key] = {"status": "ok", "path": str(path), **result}
        except MetricUnavailable as exc:
            out[key] = {"status": "unavailable", "message": str(exc)}
    return out


def _clip(settings: dict, generated, captions, real, real_captions) -> dict:
    name = settings.get("clip_model")
    if not name:
        return {"status": "not configured", "message": not_configured("clip_model", "CLIP score", CLIP_EXAMPLE)}
    try:
        model, processor = load_clip(name)
    except MetricUnavailable as exc:
        return {"status": "unavailable", "message": str(exc)}
    result = {"status": "ok", "model": str(name), "generated": mean_interval(clip_scores(model, processor, generated, captions))}
    if len(real):  # what real images score with their own captions: the reference a model aims for
        result["real"] = mean_interval(clip_scores(model, processor, real, real_captions))
    return result
