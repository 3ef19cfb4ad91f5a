"""CodeCarbon as a meter: one offline tracker per meter instance (= per trial), one task per window.

CodeCarbon reports kWh; converted to joules here, at the boundary. Its CPU figure is a
measurement only when it read RAPL (or Power Gadget / EMI / powermetrics); otherwise it is its
TDP x load estimate (``cpu_load``) or a constant -- modelled. Its RAM figure is always a model
(watts per estimated DIMM). Its GPU figure comes from NVML -- measured.
The only module importing codecarbon.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from typing import Any

from greenknobs.meters.base import Availability, EnergyMeter, WindowRegistry
from greenknobs.phases import MEASURED, MODELLED, Measurement, combine_provenance
from greenknobs.units import J_PER_KWH

MEASURED_CPU_MODES = ("intel_rapl", "intel_power_gadget", "apple_powermetrics", "windows_emi")


def codecarbon_data_dir() -> str | None:
    """CodeCarbon's packaged data folder (carbon-intensity tables), located without importing it."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


class CodeCarbonMeter(EnergyMeter):
    name = "codecarbon"
    provenance = MODELLED  # on machines without RAPL/NVML; per-window provenance is computed
    measures = ("cpu", "gpu", "ram")
    resolution_s = 0.5  # its cpu_load model samples process CPU times; sub-second windows are noisy

    def __init__(self, country_iso_code: str = "USA", tracking_mode: str = "process", measure_power_secs: float = 1.0):
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code, tracking_mode=tracking_mode, save_to_file=False,
            log_level="error", measure_power_secs=measure_power_secs, allow_multiple_runs=True,
        )
        self._country = country_iso_code
        self._mode = tracking_mode
        self._sample_s = measure_power_secs  # its in-task sampling thread; larger = cheaper, coarser
        self._windows = WindowRegistry(self.name)
        self._totals_j = {"cpu": 0.0, "gpu": 0.0, "ram": 0.0}
        self._power_w: dict[str, float] = {}
        self._segment: str | None = None
        self._segments = 0
        # Its first task probes the hardware (~1-2 s, in a child process): pay that here, outside any window.
        self._start_segment()
        self._end_segment()
        self._totals_j = {"cpu": 0.0, "gpu": 0.0, "ram": 0.0}

    @classmethod
    def probe(cls) -> Availability:
        if importlib.util.find_spec("codecarbon") is None:
            return Availability(False, "codecarbon is not installed")
        return Availability(True, "CodeCarbon (RAPL/NVML when present, else its TDP x load and RAM estimates)")

    def _hardware(self, kind: str):
        # The tracker builds its hardware list at the first task; before that there is nothing to report.
        return next((h for h in getattr(self._tracker, "_hardware", []) if type(h).__name__ == kind), None)

    def _cpu_provenance(self) -> str:
        cpu = self._hardware("CPU")
        return MEASURED if cpu is not None and getattr(cpu, "_mode", None) in MEASURED_CPU_MODES else MODELLED

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": "codecarbon", "tracking_mode": self._mode, "country_iso_code": self._country,
                               "measure_power_secs": self._sample_s}
        cpu = self._hardware("CPU")
        if cpu is not None:
            out.update({"cpu_method": getattr(cpu, "_mode", "?"), "cpu_model": getattr(cpu, "_model", "?"),
                        "cpu_tdp_w": getattr(cpu, "_tdp", None),
                        "cpu_generic_tdp": bool(getattr(cpu, "_is_generic_tdp", False))})
        if self._hardware("RAM") is not None:
            out["ram_method"] = "estimated DIMM count x watts per DIMM"
            if "ram" in self._power_w:
                out["ram_w"] = round(self._power_w["ram"], 3)
        return out

    # CodeCarbon measures one task at a time. Windows may overlap, so tasks run as *segments*
    # between consecutive window boundaries, added into running totals; a window differences
    # the totals. Without overlap that is exactly one CodeCarbon task per window (per phase).
    def _end_segment(self) -> None:
        if self._segment is None:
            return
        data = self._tracker.stop_task(self._segment)
        self._segment = None
        if data is None:
            raise RuntimeError("codecarbon: stop_task returned nothing (tracker failed to start; see its log)")
        for comp, kwh in (("cpu", data.cpu_energy), ("gpu", data.gpu_energy), ("ram", data.ram_energy)):
            self._totals_j[comp] += float(kwh) * J_PER_KWH
        self._power_w = {"cpu": float(data.cpu_power), "ram": float(data.ram_power)}

    def _start_segment(self) -> None:
        self._segments += 1
        self._segment = f"greenknobs-{self._segments}"
        self._tracker.start_task(self._segment)

    def begin_window(self, key: str) -> None:
        self._end_segment()
        self._windows.open(key, (time.perf_counter(), dict(self._totals_j)))
        self._start_segment()

    def end_window(self, key: str) -> Measurement:
        t0, before = self._windows.close(key)  # an unknown key fails here, before touching the tracker
        self._end_segment()
        wall = time.perf_counter() - t0
        if self._windows.open_count():
            self._start_segment()
        cpu_p = self._cpu_provenance()
        provenance = {"cpu": cpu_p, "gpu": MEASURED, "ram": MODELLED}
        comps = {k: {"energy_j": self._totals_j[k] - before[k], "provenance": provenance[k]}
                 for k in ("cpu", "gpu", "ram") if k != "gpu" or self._totals_j["gpu"] > 0}
        total = sum(c["energy_j"] for c in comps.values())
        return Measurement(energy_j=total, time_s=wall, provenance=combine_provenance(
            [c["provenance"] for c in comps.values()]), meter=self.name, components=comps, meter_params=self.params())

    def close(self) -> None:
        try:
            self._end_segment()
            self._tracker.stop()
        except Exception:  # stop() after task-only use may complain; nothing is left to release then
            pass
