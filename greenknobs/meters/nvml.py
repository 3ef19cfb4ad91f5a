"""NVIDIA GPU energy from NVML (through greenknobs.devices.nvml, the pynvml owner).

Per GPU, the best method the device offers:
  ``total_energy_counter``  nvmlDeviceGetTotalEnergyConsumption (mJ since driver load, Volta+)
  ``power_samples``         nvmlDeviceGetPowerUsage (mW) sampled every ``sample_period_s`` by a
                            background thread and integrated (trapezoids) -- older GPUs.
Both are measurements; which one was used is named in every figure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from greenknobs.devices.nvml import nvml as _nvml
from greenknobs.devices.nvml import probe_nvml, text, visible_handles
from greenknobs.meters.base import Availability, EnergyMeter, WindowRegistry, cuda_synchronize
from greenknobs.phases import MEASURED, Measurement

COUNTER = "total_energy_counter"
SAMPLES = "power_samples"


class _PowerIntegrator:
    """Turns power samples of some GPUs into cumulative mJ, so windows read it like a counter."""

    def __init__(self, read_mw: Callable[[], list[int]], period_s: float):
        self._read_mw = read_mw
        self._lock = threading.Lock()
        self._t = time.perf_counter()
        self._p = read_mw()
        self._mj = [0.0] * len(self._p)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), name="nvml-power", daemon=True)
        self._thread.start()

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            self.read_mj()

    def read_mj(self) -> list[float]:
        with self._lock:
            t, p = time.perf_counter(), self._read_mw()
            dt = t - self._t
            self._mj = [e + (a + b) / 2 * dt for e, a, b in zip(self._mj, self._p, p)]
            self._t, self._p = t, p
            return list(self._mj)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


class NvmlMeter(EnergyMeter):
    name = "nvml"
    provenance = MEASURED
    measures = ("gpu",)
    resolution_s = 0.1  # the energy counter advances in steps of tens of ms on most boards

    def __init__(self, gpu_indices: list[int] | None = None, sample_period_s: float = 0.1,
                 synchronize: Callable[[], None] | None = cuda_synchronize):
        self._nv = _nvml()
        self._nv.nvmlInit()
        if gpu_indices is not None:
            visible = [(f"gpu{i}", self._nv.nvmlDeviceGetHandleByIndex(i)) for i in gpu_indices]
        else:  # CUDA_VISIBLE_DEVICES resolved here, indices or UUIDs (NVML itself ignores it)
            visible = visible_handles(self._nv)
        if not visible:
            self._nv.nvmlShutdown()
            raise ValueError("nvml: no GPU to measure (check CUDA_VISIBLE_DEVICES / gpu_indices)")
        self._labels = [label for label, _ in visible]
        self._handles = [h for _, h in visible]
        self._methods = [COUNTER if self._has_counter(h) else SAMPLES for h in self._handles]
        sampled = [h for h, m in zip(self._handles, self._methods) if m == SAMPLES]
        self._sample_period_s = sample_period_s
        self._integrator = (_PowerIntegrator(lambda: [self._nv.nvmlDeviceGetPowerUsage(h) for h in sampled],
                                             sample_period_s) if sampled else None)
        self._windows = WindowRegistry(self.name)
        self._sync = synchronize

    def _has_counter(self, handle) -> bool:
        try:
            self._nv.nvmlDeviceGetTotalEnergyConsumption(handle)
            return True
        except self._nv.NVMLError:  # NOT_SUPPORTED before Volta
            return False

    @classmethod
    def probe(cls) -> Availability:
        return probe_nvml()

    def set_synchronizer(self, sync: Callable[[], None] | None) -> None:
        self._sync = sync

    def params(self) -> dict[str, Any]:
        methods = dict(zip(self._labels, self._methods))
        out: dict[str, Any] = {"method": methods, "gpu_indices": [int(label[3:]) for label in self._labels]}
        if SAMPLES in self._methods:
            out["sample_period_s"] = self._sample_period_s
        return out

    def read_mj(self) -> list[float]:
        """Cumulative mJ per visible GPU (counter, or integrated samples for GPUs without one)."""
        sampled = iter(self._integrator.read_mj()) if self._integrator else iter(())
        return [float(self._nv.nvmlDeviceGetTotalEnergyConsumption(h)) if m == COUNTER else next(sampled)
                for h, m in zip(self._handles, self._methods)]

    def begin_window(self, key: str) -> None:
        if self._sync:
            self._sync()  # start on an idle queue: earlier work must not land in this window
        self._windows.open(key, (time.perf_counter(), self.read_mj()))

    def end_window(self, key: str) -> Measurement:
        if self._sync:
            self._sync()  # the window's own queued kernels must finish before the read
        e1 = self.read_mj()
        t0, e0 = self._windows.close(key)
        wall = time.perf_counter() - t0
        per_gpu = {label: (b - a) / 1000.0 for label, a, b in zip(self._labels, e0, e1)}
        total = sum(per_gpu.values())
        return Measurement(
            energy_j=total, time_s=wall, provenance=MEASURED, meter=self.name,
            components={"gpu": {"energy_j": total, "provenance": MEASURED, "per_device_j": per_gpu,
                                "method": sorted(set(self._methods))}},
            meter_params=self.params(),
        )

    def power_limits_w(self) -> list[dict[str, Any]]:
        """Read-only: current, default and allowed power limits per visible GPU. Never sets anything."""
        out = []
        for label, h in zip(self._labels, self._handles):
            lo, hi = self._nv.nvmlDeviceGetPowerManagementLimitConstraints(h)
            out.append({"gpu": int(label[3:]), "name": text(self._nv.nvmlDeviceGetName(h)),
                        "limit_w": self._nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0,
                        "default_w": self._nv.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000.0,
                        "min_w": lo / 1000.0, "max_w": hi / 1000.0})
        return out

    def close(self) -> None:
        if self._integrator is not None:
            self._integrator.close()
        self._nv.nvmlShutdown()

