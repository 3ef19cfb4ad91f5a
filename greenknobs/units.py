"""Unit conversions at the boundaries: joules inside, kWh and grams CO2e only when reported."""

from __future__ import annotations

J_PER_KWH = 3.6e6


def kwh(energy_j: float) -> float:
    return energy_j / J_PER_KWH


def grams_co2e(energy_j: float, intensity_g_per_kwh: float, pue: float = 1.0) -> float:
    """Grams CO2e of ``energy_j`` joules drawn at the IT load, scaled by the facility's PUE."""
    return kwh(energy_j) * intensity_g_per_kwh * pue


def grams_per_phase(energy_j: dict[str, float], intensity_g_per_kwh: float, pue: float = 1.0) -> dict[str, float]:
    """Grams CO2e for each entry of {phase: joules}, plus ``total``."""
    out = {k: grams_co2e(v, intensity_g_per_kwh, pue) for k, v in energy_j.items()}
    out["total"] = sum(out.values())
    return out
