"""Where a trial runs: the device and what the machine offers. Knobs check against this."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Runtime:
    device: str  # "cpu" or "cuda"
    cpu_count: int
    gpu_count: int

    @property
    def has_gpu(self) -> bool:
        return self.gpu_count > 0

    def synchronize(self) -> None:
        """Wait for queued GPU work so a meter window closes on finished work."""
        if self.device == "cuda":
            torch.cuda.synchronize()


def detect_runtime(device: str = "auto") -> Runtime:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    return Runtime(device=device, cpu_count=len(os.sched_getaffinity(0)), gpu_count=gpus)
