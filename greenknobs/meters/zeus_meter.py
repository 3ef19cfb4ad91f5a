"""Zeus (ml-energy/zeus) as a meter. The only module importing zeus.

GPU energy comes from ``zeus.monitor.ZeusMonitor`` windows (NVML's total-energy counter on
Volta+, Zeus's power monitor on older GPUs; indices as CUDA sees them, so CUDA_VISIBLE_DEVICES
is honoured; CUDA synchronised before each read). CPU and DRAM come from greenknobs' own RAPL
reader (meters/rapl.py), same counters Zeus reads, because Zeus 0.16 hard-codes the sysfs path
and starts one spawned process per RAPL file to watch for wrap-around; our reader polls from a
thread and can be pointed at a fake tree in tests.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from greenknobs.meters.base import Availability, EnergyMeter, WindowRegistry
from greenknobs.meters.nvml import probe_nvml
from greenknobs.meters.rapl import DEFAULT_POLL_S, POWERCAP, RaplReader, probe_rapl, rapl_components
from greenknobs.phases import MEASURED, Measurement


class ZeusMeter(EnergyMeter):
    name = "zeus"
    provenance = MEASURED
    measures: tuple[str, ...] = ("gpu", "cpu", "dram")
    resolution_s = 0.1  # bounded by the GPU counter's update interval when a GPU is measured

    def __init__(self, gpu_indices: list[int] | None = None, sync_execution: bool = True,
                 rapl_root: str = POWERCAP, rapl_poll_s: float = DEFAULT_POLL_S, cpu: bool = True):
        from zeus.monitor import ZeusMonitor

        logging.getLogger("zeus").setLevel(logging.WARNING)
        gpu = probe_nvml().available
        use_rapl = cpu and probe_rapl(rapl_root).available
        self._rapl = RaplReader(rapl_root, rapl_poll_s) if use_rapl else None
        # What this instance covers (a composite's GPU part is built with cpu=False).
        self.measures = ("gpu",) + (("cpu", "dram") if use_rapl else ())
        if not gpu and self._rapl is None:
            raise ValueError("zeus: neither an NVIDIA GPU nor readable RAPL counters to measure")
        self._monitor = ZeusMonitor(gpu_indices=gpu_indices if gpu else [], cpu_indices=[])
        self._gpu_indices = list(self._monitor.gpu_indices)
        self._sync = sync_execution and bool(self._gpu_indices)
        if not self._gpu_indices:
            self.resolution_s = 0.001  # RAPL alone: counters update about every millisecond
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

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"gpu_method": "zeus.monitor.ZeusMonitor (NVML)" if self._gpu_indices else "none",
                               "gpu_indices": self._gpu_indices, "sync_execution": self._sync}
        if self._rapl is not None:
            out.update({"cpu_method": "RAPL counters (greenknobs reader)", **self._rapl.describe()})
        return out

    def begin_window(self, key: str) -> None:
        self._windows.open(key, (time.perf_counter(), self._rapl.read_j() if self._rapl else {}))
        self._monitor.begin_window(key, sync_execution=self._sync)

    def end_window(self, key: str) -> Measurement:
        t0, rapl0 = self._windows.close(key)
        m = self._monitor.end_window(key, sync_execution=self._sync)
        rapl1 = self._rapl.read_j() if self._rapl else {}
        wall = time.perf_counter() - t0
        components: dict[str, dict[str, Any]] = {}
        if self._gpu_indices:
            per_gpu = {f"gpu{self._nvml_index(k)}": float(v) for k, v in m.gpu_energy.items()}
            components["gpu"] = {"energy_j": sum(per_gpu.values()), "provenance": MEASURED,
                                 "per_device_j": per_gpu, "method": "zeus"}
        components.update(rapl_components(rapl0, rapl1))
        total = sum(c["energy_j"] for c in components.values())
        return Measurement(energy_j=total, time_s=float(m.time) if self._gpu_indices else wall, provenance=MEASURED,
                           meter=self.name, components=components, meter_params=self.params())

    def _nvml_index(self, cuda_index: int) -> int:
        """Zeus keys GPUs as CUDA sees them; label them by NVML index, as the nvml meter does."""
        try:
            return int(self._monitor.gpus.gpus[cuda_index].gpu_index)
        except (AttributeError, IndexError, TypeError):
            return cuda_index

    def close(self) -> None:
        if self._rapl is not None:
            self._rapl.close()
