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
from typing import Any


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


def rng_state() -> dict[str, Any]:
    """The random generators' state now (Python, NumPy, torch CPU and CUDA, as loaded), so work
    resumed from a stored phase output continues exactly as the run that stored it would have."""
    state: dict[str, Any] = {"python": random.getstate()}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        state["numpy"] = numpy.random.get_state()
    torch = sys.modules.get("torch")
    if torch is not None:
        state["torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy = sys.modules.get("numpy")
    if numpy is not None and "numpy" in state:
        numpy.random.set_state(state["numpy"])
    torch = sys.modules.get("torch")
    if torch is not None and "torch" in state:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def process_cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (getrusage)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


_WAIT_POLICY: dict[str, str] = {}  # what OpenMP worker threads do while they wait, as set up at import


def prefer_passive_thread_waits() -> dict[str, str]:
    """Make OpenMP worker threads sleep where they wait (OMP_WAIT_POLICY=PASSIVE) instead of
    spinning: a thread spinning at a barrier while its partner waits for a core burns CPU-seconds
    that grow with *other* processes' load, and the cpu-model counts them. The OpenMP runtime reads
    the variable once, when torch loads it, so this must run before ``import torch`` (greenknobs's
    package import calls it). A value the user set is kept. Returns what holds in this process."""
    if not _WAIT_POLICY:
        if "torch" in sys.modules:
            _WAIT_POLICY.update(policy=os.environ.get("OMP_WAIT_POLICY", "runtime default"),
                                how="torch was loaded before greenknobs: its OpenMP runtime kept what it read then")
        elif "OMP_WAIT_POLICY" in os.environ:
            _WAIT_POLICY.update(policy=os.environ["OMP_WAIT_POLICY"], how="set by the user")
        else:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
            _WAIT_POLICY.update(policy="PASSIVE", how="set by greenknobs before torch loaded")
    return dict(_WAIT_POLICY)


def process_state() -> dict[str, Any]:
    """What in this process a trial's figures depend on: thread counts, autograd, autocast, and
    whether waiting threads spin (the OpenMP wait policy)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "grad_enabled": torch.is_grad_enabled(), "autocast_cpu": torch.is_autocast_enabled("cpu"),
            "omp_wait_policy": prefer_passive_thread_waits()["policy"]}


def reset_process_state() -> dict[str, Any]:
    """Give every trial the same start: torch's default thread count (one per usable core),
    autograd on, and no compiled graphs left over from an earlier trial (torch.compile's cache).
    Returns what was reset, for the trial's record. Inter-op threads can only be set once per
    process, so they are recorded, not reset."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    torch.set_num_threads(usable_cores())
    torch.set_grad_enabled(True)
    cleared = []
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.reset()  # compiled graphs and guards: a later trial must pay its own compilation
        cleared.append("torch.compile graphs")
    return {"threads_set_to": usable_cores(), "grad_enabled": True, "caches_cleared": cleared}


def machine() -> dict[str, Any]:
    """What a figure was produced on: OS, CPU model and cores, GPUs (names, via torch when loaded)."""
    import platform

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpus: list[str] = []
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"os": platform.platform(), "python": platform.python_version(), "cpu": cpu, "cores": usable_cores(),
            "gpus": gpus}
