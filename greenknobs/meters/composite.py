"""GPU measured + CPU/RAM modelled (or measured) in one window, provenance kept per component.

The parts open and close their windows together; the result's components are the union of the
parts' components (the GPU part contributes ``gpu``; the CPU part ``cpu``/``ram`` or ``dram``),
and its provenance is rolled up with ``combine_provenance``: a total that contains any modelled
component is *modelled*, never "measured".
"""

from __future__ import annotations

import os
from typing import Any

from greenknobs.meters.base import Availability, EnergyMeter
from greenknobs.meters.nvml import NvmlMeter
from greenknobs.meters.zeus_meter import ZeusMeter
from greenknobs.phases import Measurement, combine_provenance

GPU_METERS = ("zeus", "nvml")  # preference order for a composite's GPU part


def gpu_meter_choice() -> tuple[str | None, str]:
    """The GPU meter a composite would use here, or None and why there is none."""
    gpu = NvmlMeter.probe()
    if not gpu.available:
        return None, gpu.reason
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").startswith(("GPU-", "MIG-")):
        return "nvml", gpu.reason  # a worker bound by UUID: our NVML meter resolves UUIDs itself
    return ("zeus" if ZeusMeter.probe().available else "nvml"), gpu.reason


class CompositeMeter(EnergyMeter):
    name = "composite"
    provenance = "mixed"  # per window: measured only if every part measured
    measures = ("gpu", "cpu", "dram", "ram")

    def __init__(self, gpu: EnergyMeter, cpu: EnergyMeter):
        overlap = set(gpu.measures) & set(cpu.measures)
        if overlap:
            raise ValueError(f"composite: {gpu.name} and {cpu.name} both measure {', '.join(sorted(overlap))}")
        self._parts = (gpu, cpu)
        self.resolution_s = max(gpu.resolution_s, cpu.resolution_s)

    @classmethod
    def probe(cls) -> Availability:
        choice, reason = gpu_meter_choice()
        if choice is None:
            return Availability(False, f"no GPU meter for the GPU part ({reason})")
        return Availability(True, f"{choice} for the GPU + cpu-model for CPU/RAM")

    @property
    def label(self) -> str:
        return "+".join(p.name for p in self._parts)

    def params(self) -> dict[str, Any]:
        return {f"{p.name}.{k}": v for p in self._parts for k, v in p.params().items()}

    def begin_window(self, key: str) -> None:
        gpu, cpu = self._parts
        gpu.begin_window(key)
        try:
            cpu.begin_window(key)
        except Exception:
            gpu.end_window(key)
            raise

    def end_window(self, key: str) -> Measurement:
        gpu, cpu = self._parts
        mg = gpu.end_window(key)  # the GPU part synchronises CUDA first
        mc = cpu.end_window(key)
        comps = {**{k: {**v, "meter": gpu.name} for k, v in mg.components.items()},
                 **{k: {**v, "meter": cpu.name} for k, v in mc.components.items()}}
        return Measurement(
            energy_j=sum(c["energy_j"] for c in comps.values()), time_s=max(mg.time_s, mc.time_s),
            provenance=combine_provenance([c["provenance"] for c in comps.values()]), meter=self.label,
            components=comps, meter_params=self.params(),
        )

    def close(self) -> None:
        for p in self._parts:
            p.close()
