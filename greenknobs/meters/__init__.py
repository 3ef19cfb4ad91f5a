"""Meter registry and automatic selection."""

from __future__ import annotations

from typing import Any

from greenknobs.errors import ConfigError, MeterUnavailable
from greenknobs.meters.base import Availability, EnergyMeter
from greenknobs.meters.codecarbon_meter import CodeCarbonMeter
from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.meters.nvml import NvmlMeter
from greenknobs.meters.zeus_meter import ZeusMeter

__all__ = ["EnergyMeter", "Availability", "METERS", "create_meter", "meter_table"]

METERS: dict[str, type[EnergyMeter]] = {m.name: m for m in (ZeusMeter, NvmlMeter, CodeCarbonMeter, CpuModelMeter)}
AUTO_ORDER = ("zeus", "cpu-model")  # first available wins


def create_meter(name: str = "auto", params: dict[str, Any] | None = None) -> EnergyMeter:
    params = params or {}
    if name == "auto":
        for candidate in AUTO_ORDER:
            if METERS[candidate].probe().available:
                name = candidate
                break
        params = params if name == "cpu-model" else {}
    if name not in METERS:
        raise ConfigError("meter.name", f"unknown meter {name!r}; known: auto, {', '.join(METERS)}")
    cls = METERS[name]
    availability = cls.probe()
    if not availability.available:
        raise MeterUnavailable(f"meter {name!r} is unavailable here: {availability.reason}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError("meter.params", str(exc)) from None


def meter_table() -> list[dict[str, Any]]:
    rows = []
    for name, cls in METERS.items():
        a = cls.probe()
        rows.append({"meter": name, "available": a.available, "measures": "/".join(cls.measures),
                     "provenance": cls.provenance, "reason": a.reason})
    return rows
