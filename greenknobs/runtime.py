"""Where a trial runs (device, cores) and the process facts every layer may read.

torch is imported lazily, and only when installed: the core (config, search, tracking, report)
imports this module on machines and in pipelines that never touch torch.
"""

from __future__ import annotations

import importlib.util
import os
import random
import resource
import sys
from dataclasses import dataclass


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
        torch = sys.modules.get("torch")
        if self.device == "cuda" and torch is not None:
            torch.cuda.synchronize()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def _torch():
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch


def detect_runtime(device: str = "auto") -> Runtime:
    torch = _torch()
    gpus = torch.cuda.device_count() if torch is not None and torch.cuda.is_available() else 0
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    return Runtime(device=device, cpu_count=usable_cores(), gpu_count=gpus)


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and (if loaded) torch's generators, so a trial repeats bit for bit on CPU."""
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def process_cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (getrusage)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
