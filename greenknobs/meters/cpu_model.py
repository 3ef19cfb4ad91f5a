"""The honest fallback: energy *modelled* from this process's CPU time and memory.

    E = cpu_seconds × watts_per_busy_core  +  wall_seconds × (base_watts + GB_resident × watts_per_gb)

cpu_seconds is user+system time of this process and its reaped children (getrusage), so the
figure follows the work done, not the clock, and other tenants' load does not leak in.
Defaults and their sources:
  watts_per_busy_core 4.0  — CodeCarbon's fallback for an unknown CPU (4 W per thread at full load)
  watts_per_gb        0.375 — CodeCarbon's classic RAM model (3 W per 8 GB)
  base_watts          0.0  — idle/static power is not attributed to the process by default
Every figure is labelled "modelled" and carries these parameters.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from greenknobs.meters.base import Availability, EnergyMeter, WindowRegistry
from greenknobs.phases import MODELLED, Measurement
from greenknobs.runtime import process_cpu_seconds

DEFAULT_PARAMS = {"watts_per_busy_core": 4.0, "watts_per_gb": 0.375, "base_watts": 0.0}


class CpuModelMeter(EnergyMeter):
    name = "cpu-model"
    provenance = MODELLED
    measures = ("cpu", "ram")
    resolution_s = 0.01  # getrusage advances in scheduler ticks (4-10 ms) on most kernels

    def __init__(self, **params: Any):
        unknown = set(params) - set(DEFAULT_PARAMS)
        if unknown:
            raise ValueError(f"unknown cpu-model parameter(s): {', '.join(sorted(unknown))}")
        self._params = {**DEFAULT_PARAMS, **{k: float(v) for k, v in params.items()}}
        self._windows = WindowRegistry(self.name)
        self._process = psutil.Process()

    @classmethod
    def probe(cls) -> Availability:
        return Availability(True, "always available (a model, not a measurement)")

    def params(self) -> dict[str, Any]:
        return {"model": "cpu_seconds*watts_per_busy_core + wall_s*(base_watts + rss_gb*watts_per_gb)", **self._params}

    def begin_window(self, key: str) -> None:
        self._windows.open(key, (time.perf_counter(), process_cpu_seconds()))

    def end_window(self, key: str) -> Measurement:
        wall0, cpu0 = self._windows.close(key)
        wall = time.perf_counter() - wall0
        cpu = process_cpu_seconds() - cpu0
        rss_gb = self._process.memory_info().rss / 1e9
        p = self._params
        cpu_j = cpu * p["watts_per_busy_core"] + wall * p["base_watts"]
        ram_j = wall * rss_gb * p["watts_per_gb"]
        return Measurement(
            energy_j=cpu_j + ram_j,
            time_s=wall,
            provenance=MODELLED,
            meter=self.name,
            components={
                "cpu": {"energy_j": cpu_j, "provenance": MODELLED, "cpu_s": cpu},
                "ram": {"energy_j": ram_j, "provenance": MODELLED, "rss_gb": rss_gb},
            },
            meter_params=self.params(),
        )
