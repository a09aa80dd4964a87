"""Milestone reports that run beside training, and the CPU cores they share with it."""

from __future__ import annotations

from pathlib import Path

import torch


class BackgroundReports:
    """Starts a report per milestone checkpoint and gives training one torch thread while one runs on a CPU.

    Two OpenMP threads spin-wait for each other when a third busy process takes a core: measured on 2 cores,
    training fell from ~100 to ~10 samples/s while a milestone report ran (bench/background_reports.py).
    """

    def __init__(self, start=None, on_cpu: bool = True, log=None):
        self.start, self.on_cpu, self.log = start, on_cpu, log
        self.children: list = []  # subprocess.Popen of the reports still running
        self.threads = torch.get_num_threads()

    def milestone(self, checkpoint: Path, epoch: int) -> None:
        if self.start is None:
            return
        child = self.start(checkpoint, epoch)
        if hasattr(child, "poll"):
            self.children.append(child)

    def share_cpu(self) -> None:
        """One thread while a report runs, all of them again after; cheap enough to call every step."""
        if not self.children:
            return
        self.children = [c for c in self.children if c.poll() is None]
        want = 1 if self.children and self.on_cpu else self.threads
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
            if self.log is not None:
                self.log.info(f"torch threads: {want} ({'a report is running beside training' if want == 1 else 'reports done'})")

    def restore(self) -> None:
        """The caller gets its threads back (reports may still run: they are separate processes)."""
        torch.set_num_threads(self.threads)
