"""Running sums of the training loss, gradient norm and per-timestep-bin MSE, kept on the device.

Read back only at log intervals and epoch ends (no per-step host sync); saved in checkpoints so a resumed run's
log continues exactly.
"""

from __future__ import annotations

import torch

INTERVAL_KEYS = ("loss", "mse_bins", "count_bins", "steps", "grad_norm")
EPOCH_KEYS = ("epoch_loss", "epoch_steps")


class StepStats:
    """Sums since the last log line (interval) and since the epoch began (epoch)."""

    def __init__(self, bins: int, num_train_timesteps: int, sums: dict[str, torch.Tensor] | None = None):
        self.bins, self.T = bins, num_train_timesteps
        if sums is None:
            z = lambda n: torch.zeros(n, dtype=torch.float64)  # noqa: E731
            sums = {"loss": z(1), "mse_bins": z(bins), "count_bins": z(bins), "steps": z(1), "grad_norm": z(1),
                    "epoch_loss": z(1), "epoch_steps": z(1)}
        self.sums = sums

    def add(self, loss: torch.Tensor, mse: torch.Tensor, timesteps: torch.Tensor, grad_norm) -> None:
        a = self.sums
        if a["loss"].device != loss.device:
            self.sums = a = {k: v.to(loss.device) for k, v in a.items()}
        which = (timesteps * self.bins // self.T).long()
        a["loss"] += loss.double()
        a["epoch_loss"] += loss.double()
        a["steps"] += 1
        a["epoch_steps"] += 1
        a["grad_norm"] += grad_norm.double() if torch.is_tensor(grad_norm) else float(grad_norm)
        a["mse_bins"].index_add_(0, which, mse.double())
        a["count_bins"].index_add_(0, which, torch.ones_like(mse, dtype=torch.float64))

    def read_interval(self, accelerator) -> dict:
        """Mean loss, grad norm and per-bin MSE since the last read, averaged over processes; then reset."""
        a = {k: accelerator.reduce(v.clone(), reduction="mean") for k, v in self.sums.items()}
        steps = max(1.0, a["steps"].item())
        counts = a["count_bins"].tolist()
        out = {"steps": steps, "loss": a["loss"].item() / steps, "grad_norm": a["grad_norm"].item() / steps,
               "loss_bins": [(s / c if c else None) for s, c in zip(a["mse_bins"].tolist(), counts)]}
        for k in INTERVAL_KEYS:
            self.sums[k].zero_()
        return out

    def read_epoch(self, accelerator) -> float:
        """Mean training loss of the epoch (averaged over processes); then reset."""
        epoch_loss = accelerator.reduce(self.sums["epoch_loss"].clone(), reduction="mean")
        loss = epoch_loss.item() / max(1.0, self.sums["epoch_steps"].item())
        for k in EPOCH_KEYS:
            self.sums[k].zero_()
        return loss

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.sums.items()}
