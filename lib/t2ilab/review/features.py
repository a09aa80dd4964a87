"""Distribution distances without downloads: a small autoencoder trained on the data set's own images gives the
features for KID and Fréchet distance; plus a nearest-neighbour memorization check in pixel space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save
from torch import nn

from t2ilab import image_grids
from t2ilab.files import write_atomically
from t2ilab.intervals import wilson_interval

ENCODER_VERSION = 1  # bump when the architecture or training recipe changes: cached encoders are then retrained
ENCODER_SIZE = 32  # images are resized (area) to this side before encoding, so one encoder fits every resolution
BOTTLENECK = 32  # autoencoder code size: layout, colours, composition
FEATURE_DIM = BOTTLENECK + 16 + 32  # plus the log energy of each first- and second-layer filter (sharpness, noise)
MEMORIZATION_THRESHOLD = 1 / 3  # see memorization()
MIN_DISTANCE_IMAGES = 20  # default reports.min_distance_images: fewer images per side give a sentence, not a number
# KID's cubic kernel on features of length sqrt(d) lies in [0, 8], so KID lies in [0, 16]; FD in [0, 4d].
SCALE_NOTE = (f"Features: the {FEATURE_DIM} encoder features, standardised on the training images, then each image's "
              f"vector scaled to length sqrt({FEATURE_DIM}), so no single far-off image dominates. On this scale KID "
              f"lies between 0 and 16 and FD between 0 and {4 * FEATURE_DIM}; two real samples score near 0 on KID.")
_ENCODERS: dict[tuple, "FeatureEncoder"] = {}  # in-process cache: (fingerprint, steps, seed) -> encoder


class FeatureEncoder(nn.Module):
    """A conv autoencoder; features = its bottleneck plus the log energy of its first two conv layers' filters."""

    def __init__(self) -> None:
        super().__init__()
        # Kept narrow (16/32 channels, transposed convolutions) so a few hundred steps take seconds on a CPU.
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.SiLU(),  # 16x16
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.SiLU(),  # 8x8
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.SiLU(),  # 4x4
            nn.Flatten(), nn.Linear(32 * 4 * 4, BOTTLENECK),
        )
        self.decoder = nn.Sequential(
            nn.Linear(BOTTLENECK, 32 * 4 * 4), nn.SiLU(), nn.Unflatten(1, (32, 4, 4)),
            nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1), nn.SiLU(),  # 8x8
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.SiLU(),  # 16x16
            nn.ConvTranspose2d(16, 3, 4, stride=2, padding=1),  # 32x32
        )
        # Per-dimension mean and std of the training images' features: features are standardised, so the
        # polynomial kernel of KID sees unit-scale inputs whatever the training run made of each dimension.
        self.register_buffer("feature_mean", torch.zeros(FEATURE_DIM))
        self.register_buffer("feature_std", torch.ones(FEATURE_DIM))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(pixels))

    def raw_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unstandardised features (N, FEATURE_DIM) of encoder inputs."""
        # A bottleneck alone misses blur and noise (the decoder blurs too); per-filter energies are the diagonal
        # of the Gram matrices that describe texture (Gatys et al. 2015, https://arxiv.org/abs/1508.06576).
        first = self.encoder[0](pixels)
        second = self.encoder[2](self.encoder[1](first))
        energies = [torch.log(h.pow(2).mean((2, 3)) + 1e-4) for h in (first, second)]
        return torch.cat([self.encoder(pixels), *energies], dim=1)


def _to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) array or (N, 3, H, W) tensor -> float (N, 3, 32, 32) in [-1, 1]."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    pixels = images.to(torch.float32) / 127.5 - 1.0
    if pixels.shape[-1] != ENCODER_SIZE or pixels.shape[-2] != ENCODER_SIZE:
        pixels = F.interpolate(pixels, size=(ENCODER_SIZE, ENCODER_SIZE), mode="area" if pixels.shape[-1] > ENCODER_SIZE else "bilinear")
    return pixels


def train_feature_encoder(images: np.ndarray | torch.Tensor, steps: int = 300, batch_size: int = 64, seed: int = 0) -> FeatureEncoder:
    """Train the autoencoder on real images (uint8) for `steps` Adam steps; deterministic for a seed."""
    if len(images) < 2:
        raise ValueError(f"the feature encoder needs at least 2 training images, got {len(images)}")
    pixels = _to_input(images)
    order = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        encoder = FeatureEncoder()
        optimizer = torch.optim.Adam(encoder.parameters(), lr=2e-3)
        for _ in range(steps):
            batch = pixels[order.choice(len(pixels), size=min(batch_size, len(pixels)), replace=False)]
            loss = F.mse_loss(encoder(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    encoder.eval()
    with torch.no_grad():
        raw = torch.cat([encoder.raw_features(chunk) for chunk in pixels.split(256)])
        encoder.feature_mean.copy_(raw.mean(0))
        encoder.feature_std.copy_(raw.std(0).clamp_min(1e-2))  # a floor: a near-constant filter must not dominate
    return encoder


def encoder_path(cache_dir: str | Path, fingerprint: str, steps: int = 300, seed: int = 0) -> Path:
    """Where the encoder for a data fingerprint is cached: next to the data set's own cache."""
    # Keyed by content, not by the train/val split (val_fraction): the encoder describes the data set's images.
    return Path(cache_dir) / fingerprint / f"feature_encoder-v{ENCODER_VERSION}-{steps}steps-seed{seed}.safetensors"


def load_or_train_encoder(dataset, cache_dir: str | Path | None = None, steps: int = 300, seed: int = 0) -> FeatureEncoder:
    """The encoder for an ImageCaptionSet, trained on its training split once and then read from the cache."""
    key = (dataset.fingerprint, steps, seed)
    if key in _ENCODERS:
        return _ENCODERS[key]
    path = encoder_path(cache_dir, *key) if cache_dir is not None else None
    encoder = None
    if path is not None and path.is_file():
        encoder = FeatureEncoder()
        try:
            encoder.load_state_dict(load_file(str(path)))
        except Exception:  # a damaged or foreign file: retrain and overwrite it
            encoder = None
    if encoder is None:
        encoder = train_feature_encoder(dataset.images[dataset.train_idx], steps=steps, seed=seed)
        # Written only into an existing data-cache folder: creating one would look like a damaged data cache.
        if path is not None and path.parent.is_dir():
            weights = save({k: v.contiguous() for k, v in encoder.state_dict().items()})
            write_atomically(path, lambda f: f.write(weights))
    encoder.eval()
    _ENCODERS[key] = encoder
    return encoder


@torch.no_grad()
def encode(encoder: FeatureEncoder, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Features (N, FEATURE_DIM) float64 of uint8 images: standardised, then each row scaled to length sqrt(d)."""
    pixels = _to_input(images)
    raw = torch.cat([encoder.raw_features(chunk) for chunk in pixels.split(batch_size)])
    standard = ((raw - encoder.feature_mean) / encoder.feature_std).double()
    # Standardised alone, a generated image unlike any training image sat thousands of stds out, and the cubic
    # kernel turned that into KID ~ 1e8 (issue 14). On the sphere of radius sqrt(d) the kernel is bounded.
    return (F.normalize(standard, dim=1) * FEATURE_DIM**0.5).numpy()


def kid(features_a: np.ndarray, features_b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, mean and std over random subsets."""
    # Bińkowski et al. 2018, https://arxiv.org/abs/1801.01401 (eq. 4 estimator, averaged over subsets as in
    # their code): unlike FID it is unbiased, so two samples of the same distribution score ~0 at any N.
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples on each side, got {len(a)} and {len(b)}")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        # Diagonals left out of the within-set means: that is what makes the estimate unbiased.
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd)
    out = {"mean": float(np.mean(values)), "std": float(np.std(values)), "n_a": len(a), "n_b": len(b),
           "subsets": subsets, "subset_size": m}
    if m == min(len(a), len(b)):
        out["note"] = f"subsets hold all {m} samples of the smaller set, so std understates the uncertainty"
    return out


def frechet_unavailable(n_a: int, n_b: int, dim: int) -> str | None:
    """Why a Fréchet distance cannot be computed for these sample counts (None when it can)."""
    if min(n_a, n_b) <= dim:
        return f"Fréchet distance needs more samples than feature dimensions ({dim}) on each side; got {n_a} and {n_b}"
    return None


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float | None:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) (Heusel et al. 2017); None when N <= feature dim."""
    # https://arxiv.org/abs/1706.08500. Biased upwards at small N (it never reaches 0 for two real samples), so
    # compare values only at equal N. Tr((S_a S_b)^1/2) = sum of sqrt eigenvalues of S_a^1/2 S_b S_a^1/2, which
    # is symmetric: eigh is stable where sqrtm of the non-symmetric product is not.
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if frechet_unavailable(len(a), len(b), a.shape[1]):
        return None
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(s_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    cross = np.sqrt(np.linalg.eigvalsh(root_a @ s_b @ root_a).clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)


def _flat(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).reshape(len(images), -1).to(torch.float32) / 255.0


def _nearest(query: torch.Tensor, reference: torch.Tensor, exclude_self: bool = False, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(index, RMS pixel distance) of each query's nearest reference image (not itself, with exclude_self)."""
    ref_sq = (reference**2).sum(1)
    parts = []
    for start in range(0, len(query), chunk):
        scores = ref_sq[None] - 2 * query[start : start + chunk] @ reference.T  # |q - r|^2 - |q|^2
        if exclude_self:  # query i is reference i
            rows = torch.arange(scores.shape[0])
            scores[rows, rows + start] = torch.inf
        parts.append(scores.argmin(1))
    index = torch.cat(parts)
    # Recomputed exactly for the chosen pair: the expanded form loses precision right where copies sit (d ~ 0).
    distance = ((query - reference[index]) ** 2).mean(1).sqrt()
    return index.numpy(), distance.numpy().astype(np.float64)


def memorization(generated: np.ndarray, train_images: np.ndarray, heldout_images: np.ndarray,
                 threshold: float = MEMORIZATION_THRESHOLD, k: int = 8) -> dict:
    """Per generated image: RMS pixel distance (0..1) to its nearest training image / to its nearest held-out one."""
    # A copy of a training image has ratio ~0; a new sample of the data distribution is about as close to the
    # training set as to unseen real images (ratio ~1; lower when the training split is the larger one).
    # Flag ratio < 1/3, the margin Carlini et al. 2023 use for extracted training images
    # (https://arxiv.org/abs/2301.13188, sec. 4). Simple images (one small shape) can land that close to a
    # training image by chance, so the same test on the held-out images themselves (nearest *other* held-out
    # image as denominator) is reported as the share a model that never copies would get.
    sizes = {name: tuple(x.shape[1:]) for name, x in
             (("generated", generated), ("train", train_images), ("heldout", heldout_images))}
    if len(set(sizes.values())) != 1 or len(train_images) == 0 or len(heldout_images) < 2:
        raise ValueError(f"memorization needs uint8 (N, H, W, 3) sets of one size, >= 1 training and >= 2 "
                         f"held-out images; got {sizes}, {len(train_images)} train, {len(heldout_images)} held-out")
    query, train, heldout = _flat(generated), _flat(train_images), _flat(heldout_images)
    train_index, d_train = _nearest(query, train)
    held_index, d_held = _nearest(query, heldout)
    ratio = _ratio(d_train, d_held)
    _, base_train = _nearest(heldout, train)
    _, base_held = _nearest(heldout, heldout, exclude_self=True)
    baseline = _ratio(base_train, base_held)
    order = np.argsort(ratio, kind="stable")[:k]
    closest = [{"generated": int(i), "train_index": int(train_index[i]), "distance_train": float(d_train[i]),
                "heldout_index": int(held_index[i]), "distance_heldout": float(d_held[i]), "ratio": float(ratio[i])}
               for i in order]
    flagged, base_flagged = ratio < threshold, baseline < threshold
    low, _ = wilson_interval(int(flagged.sum()), len(flagged))
    _, base_high = wilson_interval(int(base_flagged.sum()), len(base_flagged))
    return {
        "metric": "RMS pixel distance (0..1) to the nearest training image / to the nearest held-out real image",
        "threshold": threshold, "n_generated": len(generated), "n_train": len(train_images),
        "n_heldout": len(heldout_images), "n_flagged": int(flagged.sum()), "flagged_share": float(flagged.mean()),
        "heldout_flagged_share": float(base_flagged.mean()), "ratio_median": float(np.median(ratio)),
        "heldout_ratio_median": float(np.median(baseline)), "ratio_min": float(ratio.min()),
        # Copying is claimed only when the flagged share's 95% interval lies above the held-out one's.
        "verdict": "more near-copies than unseen real images" if low > base_high else "no more near-copies than unseen real images",
        "closest": closest,
        "ratios": ratio,  # numpy, one per generated image (for plots and tests); not JSON: drop it before writing
    }


def _ratio(d_train: np.ndarray, d_held: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d_held > 0, d_train / d_held, np.where(d_train > 0, np.inf, 1.0))


def memorization_figure(generated: np.ndarray, train_images: np.ndarray, heldout_images: np.ndarray,
                        result: dict, scale: int | None = None) -> Image.Image:
    """One row per closest pair: generated | nearest training image | nearest held-out image, with the ratio."""
    side = generated.shape[1]
    scale = scale or max(1, 64 // side)
    cell, gap = side * scale, 4
    font = image_grids.FONT
    text_w = 200
    rows = result["closest"]
    header = 14
    canvas = Image.new("RGB", (3 * (cell + gap) + text_w, header + max(1, len(rows)) * (cell + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(("generated", "nearest train", "nearest held-out")):
        draw.text((col * (cell + gap), 0), title, fill="black", font=font)
    for r, pair in enumerate(rows):
        y = header + r * (cell + gap)
        tiles = (generated[pair["generated"]], train_images[pair["train_index"]], heldout_images[pair["heldout_index"]])
        for col, tile in enumerate(tiles):
            canvas.paste(image_grids.tile(tile, cell), (col * (cell + gap), y))
        flag = "  FLAGGED" if pair["ratio"] < result["threshold"] else ""
        lines = [f"ratio {pair['ratio']:.3f}{flag}", f"d_train {pair['distance_train']:.4f}",
                 f"d_held-out {pair['distance_heldout']:.4f}"]
        for k, line in enumerate(lines):
            draw.text((3 * (cell + gap), y + 2 + 12 * k), line, fill="crimson" if flag and k == 0 else "black", font=font)
    return canvas


def distribution_distance(generated: np.ndarray, dataset, cache_dir: str | Path | None = None,
                          encoder_steps: int = 300, seed: int = 0, kid_subsets: int = 100,
                          reference: str = "train", min_images: int = MIN_DISTANCE_IMAGES) -> dict:
    """KID and Fréchet distance between generated images and real ones, in encoder features (see SCALE_NOTE).

    `generated`: uint8 (N, H, W, 3) images (quality.sample_like_dataset draws them from a checkpoint). `reference`: "train"
    (a sample of the training split as large as the generated set) or "heldout" (every held-out image). Below
    `min_images` per side a distance is None and "kid_note" / "fd_note" say why.
    """
    if reference == "heldout":
        pick, label = dataset.val_idx, "held-out"
    else:
        pick, label = train_sample(dataset, len(generated), seed), "training"
    real = dataset.images[pick].permute(0, 2, 3, 1).numpy()
    encoder = load_or_train_encoder(dataset, cache_dir, steps=encoder_steps, seed=seed)
    f_gen, f_real = encode(encoder, generated), encode(encoder, real)
    out = {"n_generated": len(generated), "n_real": len(real), "reference": label, "feature_dim": FEATURE_DIM,
           "features": f"autoencoder trained {encoder_steps} steps on the {len(dataset.train_idx)} training images "
                       f"(data {dataset.fingerprint}); bottleneck + filter log-energies, standardised, length sqrt(d)",
           "scale": SCALE_NOTE, "min_images": min_images, **_distances(f_gen, f_real, label, min_images, kid_subsets, seed)}
    if len(dataset.val_idx) >= 2:
        # The same distances between two real samples (held-out vs training): the floor a perfect model reaches.
        f_held = encode(encoder, dataset.images[dataset.val_idx].permute(0, 2, 3, 1).numpy())
        train_pick = train_sample(dataset, max(len(f_held), len(generated)), seed)
        f_train = encode(encoder, dataset.images[train_pick].permute(0, 2, 3, 1).numpy())
        out["real_baseline"] = {"n_heldout": len(f_held), "n_real": len(f_train),
                                **_distances(f_held, f_train, "held-out", min_images, kid_subsets, seed)}
    return out


def train_sample(dataset, k: int, seed: int) -> np.ndarray:
    """Sorted indices of k training images (all when there are fewer), the same ones for a seed."""
    return np.sort(np.random.default_rng([seed, 1]).permutation(dataset.train_idx)[:k])


def _distances(a: np.ndarray, b: np.ndarray, label: str, min_images: int, subsets: int, seed: int) -> dict:
    """{"kid", "kid_note", "fd", "fd_note"}: a value, or None with the sentence saying what is missing."""
    have = min(len(a), len(b))
    kid_note = f"too few {label} images for KID (have {have}, need >= {min_images})" if have < max(2, min_images) else None
    fd_note = (f"too few {label} images for FD (have {have}, need >= {min_images})" if have < min_images
               else frechet_unavailable(len(a), len(b), a.shape[1]))
    return {"kid": None if kid_note else kid(a, b, subsets=subsets, seed=seed), "kid_note": kid_note,
            "fd": None if fd_note else frechet_distance(a, b), "fd_note": fd_note}
