"""A user's own energy meter, named in an experiment as ``user_meters:WallClockMeter`` (tests/ is
on the path): a constant-power model of wall time. Also a class that is not a meter."""

from __future__ import annotations

import time

from greenknobs.meters.base import EnergyMeter, WindowRegistry
from greenknobs.phases import MODELLED, Availability, Measurement


class WallClockMeter(EnergyMeter):
    name = "wall-clock"
    provenance = MODELLED
    measures = ("cpu",)
    resolution_s = 0.001

    def __init__(self, watts: float = 10.0):
        self.watts = float(watts)
        self._windows = WindowRegistry(self.name)
        self.windows_closed = 0

    @classmethod
    def probe(cls) -> Availability:
        return Availability(True, "a clock is always there")

    def params(self) -> dict[str, float]:
        return {"watts": self.watts}

    def begin_window(self, key: str) -> None:
        self._windows.open(key, time.perf_counter())

    def end_window(self, key: str) -> Measurement:
        seconds = time.perf_counter() - self._windows.close(key)
        energy = self.watts * seconds
        return Measurement(energy_j=energy, time_s=seconds, provenance=MODELLED, meter=self.label,
                           components={"cpu": {"energy_j": energy, "provenance": MODELLED}}, meter_params=self.params())


class NotAMeter:
    """Has the methods, not the contract."""

    def begin_window(self, key: str) -> None: ...
