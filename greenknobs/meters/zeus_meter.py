"""Zeus (ml-energy/zeus): GPU energy via NVML and CPU/DRAM via RAPL. The only module importing zeus."""

from __future__ import annotations

import os
from typing import Any

from greenknobs.meters.base import Availability, EnergyMeter, WindowRegistry
from greenknobs.meters.nvml import probe_nvml
from greenknobs.phases import MEASURED, Measurement

POWERCAP = "/sys/class/powercap"


def probe_rapl(root: str = POWERCAP) -> Availability:
    if not os.path.isdir(root):
        return Availability(False, f"no {root} (RAPL not exposed)")
    zones = [d for d in os.listdir(root) if d.startswith("intel-rapl:") and d.count(":") == 1]
    if not zones:
        return Availability(False, f"no RAPL package zone under {root}")
    counter = os.path.join(root, zones[0], "energy_uj")
    if not os.access(counter, os.R_OK):
        return Availability(False, f"RAPL not readable: {counter} needs root")
    return Availability(True, f"RAPL readable ({len(zones)} package zone(s))")


class ZeusMeter(EnergyMeter):
    name = "zeus"
    provenance = MEASURED
    measures = ("gpu", "cpu", "dram")

    def __init__(self, gpu_indices: list[int] | None = None, sync_execution: bool = True):
        from zeus.monitor import ZeusMonitor

        gpus = probe_nvml().available
        cpus = probe_rapl().available
        self._monitor = ZeusMonitor(
            gpu_indices=gpu_indices if gpus else [],
            cpu_indices=None if cpus else [],
            sync_execution_with="torch" if sync_execution else None,
        )
        self._windows = WindowRegistry(self.name)

    @classmethod
    def probe(cls) -> Availability:
        try:
            import zeus  # noqa: F401
        except ImportError:
            return Availability(False, "zeus is not installed")
        gpu, cpu = probe_nvml(), probe_rapl()
        if gpu.available or cpu.available:
            return Availability(True, "; ".join(a.reason for a in (gpu, cpu) if a.available))
        return Availability(False, f"{gpu.reason}; {cpu.reason}")

    def begin_window(self, key: str) -> None:
        self._windows.open(key, None)
        self._monitor.begin_window(key)

    def end_window(self, key: str) -> Measurement:
        self._windows.close(key)
        m = self._monitor.end_window(key)
        components: dict[str, dict[str, Any]] = {}
        if m.gpu_energy:
            components["gpu"] = {"energy_j": float(sum(m.gpu_energy.values())), "provenance": MEASURED,
                                 "per_device_j": {f"gpu{k}": float(v) for k, v in m.gpu_energy.items()}}
        if m.cpu_energy:
            components["cpu"] = {"energy_j": float(sum(m.cpu_energy.values())), "provenance": MEASURED}
        if m.dram_energy:
            components["dram"] = {"energy_j": float(sum(m.dram_energy.values())), "provenance": MEASURED}
        total = sum(c["energy_j"] for c in components.values())
        return Measurement(energy_j=total, time_s=float(m.time), provenance=MEASURED, meter=self.name,
                           components=components)
