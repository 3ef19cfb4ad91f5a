"""RAPL energy counters from the powercap sysfs tree (Intel, and AMD Zen on recent kernels).

Each zone exposes ``energy_uj`` (a counter that wraps at ``max_energy_range_uj``) and ``name``.
Package zones (``package-N``) are the CPU; ``dram`` zones are memory. ``core``/``uncore`` are
inside the package and ``psys`` spans the platform, so both are skipped to avoid double counting.

The counter wraps every few minutes to hours (262 kJ is ~22 min at 200 W), so a background
thread reads every ``poll_s`` to see each wrap; a window then differences accumulated joules.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from greenknobs.meters.base import Availability, EnergyMeter, WindowRegistry
from greenknobs.phases import MEASURED, Measurement

POWERCAP = "/sys/class/powercap"
ZONE_RE = re.compile(r"^intel-rapl:\d+(:\d+)?$")
# Wraps must be seen between reads: poll well inside range / (a generous 1 kW per package).
DEFAULT_POLL_S = 30.0


@dataclass
class Zone:
    path: str
    kind: str  # "cpu" or "dram"
    label: str  # e.g. "package-0"
    max_uj: int
    last_uj: int = 0
    total_uj: int = 0  # accumulated since the reader started, wraps undone


def _read_int(path: str) -> int:
    with open(path, encoding="ascii") as f:
        return int(f.read().strip())


def _zone_kind(name: str) -> str | None:
    if name.startswith("package"):
        return "cpu"
    if name == "dram":
        return "dram"
    return None  # core, uncore, psys: contained in (or containing) the package figure


def find_zones(root: str = POWERCAP) -> list[Zone]:
    """Package and DRAM zones under ``root``; raises OSError (PermissionError) if one cannot be read."""
    zones = []
    for entry in sorted(os.listdir(root)):
        if not ZONE_RE.match(entry):
            continue
        path = os.path.join(root, entry)
        try:
            with open(os.path.join(path, "name"), encoding="ascii") as f:
                kind_name = f.read().strip()
        except FileNotFoundError:
            continue
        kind = _zone_kind(kind_name)
        if kind is None:
            continue
        zone = Zone(path, kind, kind_name, _read_int(os.path.join(path, "max_energy_range_uj")))
        zone.last_uj = _read_int(os.path.join(path, "energy_uj"))
        zones.append(zone)
    return zones


def probe_rapl(root: str = POWERCAP) -> Availability:
    if not os.path.isdir(root):
        return Availability(False, f"no {root} (RAPL not exposed)")
    try:
        zones = find_zones(root)
    except PermissionError as exc:
        return Availability(False, f"RAPL not readable: {exc.filename} needs root")
    except (OSError, ValueError) as exc:
        return Availability(False, f"RAPL unreadable under {root}: {exc}")
    packages = [z for z in zones if z.kind == "cpu"]
    if not packages:
        return Availability(False, f"no RAPL package zone under {root}")
    dram = sum(z.kind == "dram" for z in zones)
    return Availability(True, f"RAPL readable ({len(packages)} package, {dram} dram zone(s))")


class RaplReader:
    """Wrap-corrected joules per component (``cpu``, ``dram``) since the reader started."""

    def __init__(self, root: str = POWERCAP, poll_s: float | None = DEFAULT_POLL_S):
        self.root = root
        self.zones = find_zones(root)
        if not any(z.kind == "cpu" for z in self.zones):
            raise OSError(f"no RAPL package zone under {root}")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if poll_s:
            self._thread = threading.Thread(target=self._poll, args=(poll_s,), name="rapl-poll", daemon=True)
            self._thread.start()

    def _poll(self, period: float) -> None:
        while not self._stop.wait(period):
            self.read_j()

    def read_j(self) -> dict[str, float]:
        """Accumulated joules per component; each call also folds in any wrap since the last."""
        with self._lock:
            for z in self.zones:
                now = _read_int(os.path.join(z.path, "energy_uj"))
                delta = now - z.last_uj
                if delta < 0:  # the counter wrapped (at most once: reads are < one wrap apart)
                    delta += z.max_uj
                z.total_uj += delta
                z.last_uj = now
            out: dict[str, float] = {}
            for z in self.zones:
                out[z.kind] = out.get(z.kind, 0.0) + z.total_uj / 1e6
            return out

    def describe(self) -> dict[str, Any]:
        return {"rapl_root": self.root, "rapl_zones": [f"{os.path.basename(z.path)}={z.label}" for z in self.zones]}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)


class RaplMeter(EnergyMeter):
    """CPU package and DRAM energy straight from RAPL counters (no third-party library)."""

    name = "rapl"
    provenance = MEASURED
    measures = ("cpu", "dram")
    resolution_s = 0.001  # RAPL counters update about every millisecond

    def __init__(self, root: str = POWERCAP, poll_s: float = DEFAULT_POLL_S):
        self._reader = RaplReader(root, poll_s)
        self._windows = WindowRegistry(self.name)

    @classmethod
    def probe(cls) -> Availability:
        return probe_rapl()

    def params(self) -> dict[str, Any]:
        return {"method": "powercap energy_uj counters, wrap-corrected", **self._reader.describe()}

    def begin_window(self, key: str) -> None:
        self._windows.open(key, (time.perf_counter(), self._reader.read_j()))

    def end_window(self, key: str) -> Measurement:
        e1 = self._reader.read_j()
        t0, e0 = self._windows.close(key)
        wall = time.perf_counter() - t0
        comps = rapl_components(e0, e1)
        return Measurement(energy_j=sum(c["energy_j"] for c in comps.values()), time_s=wall, provenance=MEASURED,
                           meter=self.name, components=comps, meter_params=self.params())

    def close(self) -> None:
        self._reader.close()


def rapl_components(before: dict[str, float], after: dict[str, float]) -> dict[str, dict[str, Any]]:
    return {k: {"energy_j": after[k] - before.get(k, 0.0), "provenance": MEASURED, "method": "RAPL"} for k in after}
