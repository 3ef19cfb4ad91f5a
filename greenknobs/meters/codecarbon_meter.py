"""CodeCarbon as a meter: one offline tracker per meter instance, one task per window.

CodeCarbon reports kWh; converted to joules here, at the boundary. Its CPU figure is a
measurement only when it read RAPL; otherwise it is its TDP/constant estimate (modelled).
"""

from __future__ import annotations

import logging
from typing import Any

from greenknobs.meters.base import Availability, EnergyMeter, WindowRegistry
from greenknobs.phases import MEASURED, MODELLED, Measurement, combine_provenance

J_PER_KWH = 3.6e6


class CodeCarbonMeter(EnergyMeter):
    name = "codecarbon"
    provenance = MODELLED  # on machines without RAPL/NVML; per-window provenance is computed
    measures = ("cpu", "gpu", "ram")

    def __init__(self, country_iso_code: str = "USA"):
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code, tracking_mode="process", save_to_file=False,
            log_level="error", measure_power_secs=1,
        )
        self._country = country_iso_code
        self._windows = WindowRegistry(self.name)
        self._started = False

    @classmethod
    def probe(cls) -> Availability:
        try:
            import codecarbon  # noqa: F401
        except ImportError:
            return Availability(False, "codecarbon is not installed")
        return Availability(True, "CodeCarbon (RAPL/NVML when present, else its TDP and RAM estimates)")

    def _cpu_provenance(self) -> str:
        hardware = getattr(self._tracker, "_hardware", [])
        for h in hardware:
            mode = getattr(h, "_mode", None)
            if type(h).__name__ == "CPU":
                return MEASURED if mode in ("intel_rapl", "intel_power_gadget", "apple_powermetrics") else MODELLED
        return MODELLED

    def params(self) -> dict[str, Any]:
        return {"model": "codecarbon", "country_iso_code": self._country, "tracking_mode": "process"}

    def begin_window(self, key: str) -> None:
        self._windows.open(key, None)
        self._tracker.start_task(key)

    def end_window(self, key: str) -> Measurement:
        self._windows.close(key)
        data = self._tracker.stop_task(key)
        cpu_p = self._cpu_provenance()
        comps = {
            "cpu": {"energy_j": float(data.cpu_energy) * J_PER_KWH, "provenance": cpu_p},
            "gpu": {"energy_j": float(data.gpu_energy) * J_PER_KWH, "provenance": MEASURED},
            "ram": {"energy_j": float(data.ram_energy) * J_PER_KWH, "provenance": MODELLED},
        }
        comps = {k: v for k, v in comps.items() if v["energy_j"] > 0 or k == "cpu"}
        total = sum(c["energy_j"] for c in comps.values())
        return Measurement(energy_j=total, time_s=float(data.duration), provenance=combine_provenance(
            [c["provenance"] for c in comps.values()]), meter=self.name, components=comps, meter_params=self.params())

    def close(self) -> None:
        try:
            self._tracker.stop()
        except Exception:  # stop() after task-only use may complain; nothing to release then
            pass
