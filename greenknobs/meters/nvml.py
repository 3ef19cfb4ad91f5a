"""NVIDIA GPU energy from NVML (nvidia-ml-py). The only module that imports pynvml."""

from __future__ import annotations

import os
import time
from typing import Any

from greenknobs.meters.base import Availability, EnergyMeter, WindowRegistry
from greenknobs.phases import MEASURED, Measurement


def _nvml():
    import pynvml  # provided by nvidia-ml-py

    return pynvml


def visible_gpu_indices(count: int) -> list[int]:
    """NVML indices of the GPUs this process may use, honouring CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or visible.strip() == "":
        return list(range(count)) if visible is None else []
    out = []
    for tok in visible.split(","):
        tok = tok.strip()
        if tok.isdigit() and int(tok) < count:
            out.append(int(tok))
    return out


def probe_nvml() -> Availability:
    try:
        nv = _nvml()
        nv.nvmlInit()
    except Exception as exc:  # library missing or driver absent: both mean "not here"
        return Availability(False, f"NVML library not found or no NVIDIA driver ({type(exc).__name__})")
    try:
        count = nv.nvmlDeviceGetCount()
        if not visible_gpu_indices(count):
            return Availability(False, "NVML found no visible NVIDIA GPU")
        return Availability(True, f"{count} NVIDIA GPU(s) via NVML")
    finally:
        nv.nvmlShutdown()


class NvmlMeter(EnergyMeter):
    """GPU energy from the total-energy counter (mJ since driver load, Volta+)."""

    name = "nvml"
    provenance = MEASURED
    measures = ("gpu",)

    def __init__(self, gpu_indices: list[int] | None = None):
        self._nv = _nvml()
        self._nv.nvmlInit()
        count = self._nv.nvmlDeviceGetCount()
        self._indices = gpu_indices if gpu_indices is not None else visible_gpu_indices(count)
        self._handles = [self._nv.nvmlDeviceGetHandleByIndex(i) for i in self._indices]
        self._windows = WindowRegistry(self.name)
        self._sync = None

    @classmethod
    def probe(cls) -> Availability:
        return probe_nvml()

    def set_synchronizer(self, sync) -> None:
        self._sync = sync

    def _read_mj(self) -> list[int]:
        return [self._nv.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]

    def begin_window(self, key: str) -> None:
        if self._sync:
            self._sync()
        self._windows.open(key, (time.perf_counter(), self._read_mj()))

    def end_window(self, key: str) -> Measurement:
        if self._sync:
            self._sync()
        t0, e0 = self._windows.close(key)
        e1 = self._read_mj()
        wall = time.perf_counter() - t0
        per_gpu = {f"gpu{i}": (b - a) / 1000.0 for i, a, b in zip(self._indices, e0, e1)}
        total = sum(per_gpu.values())
        return Measurement(
            energy_j=total, time_s=wall, provenance=MEASURED, meter=self.name,
            components={"gpu": {"energy_j": total, "provenance": MEASURED, "per_device_j": per_gpu,
                                "method": "nvmlDeviceGetTotalEnergyConsumption"}},
        )

    def power_limits_w(self) -> list[dict[str, Any]]:
        """Read-only: current and allowed power limits per visible GPU."""
        out = []
        for i, h in zip(self._indices, self._handles):
            lo, hi = self._nv.nvmlDeviceGetPowerManagementLimitConstraints(h)
            out.append({"gpu": i, "limit_w": self._nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0,
                        "min_w": lo / 1000.0, "max_w": hi / 1000.0})
        return out

    def close(self) -> None:
        self._nv.nvmlShutdown()
