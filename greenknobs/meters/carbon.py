"""Grams CO2e from energy: joules x carbon intensity (g/kWh) x PUE, with the intensity's source named.

Intensities come from the offline tables packaged with CodeCarbon (read as data files; the
package is located via meters/codecarbon_meter.py, never imported here):
  country  private_infra/global_energy_mix.json ``carbon_intensity`` (Ember/OWID, yearly mean)
  region   USA state: EPA eGRID (lbs/MWh -> g/kWh); CAN province: fossil share x per-fuel
           factors (CodeCarbon's method); SWE/NOR/FIN bidding zone (SE1..., NO1..., FI);
           CHN province.
Unknown country: the world average, and the source says so.
"""

from __future__ import annotations

import json
import os
from functools import cache
from typing import Any

G_PER_LB = 453.59237
NORDIC = ("SWE", "NOR", "FIN")
CANADA_FUEL_G_PER_KWH = {"coal": 995.725971, "petroleum": 816.6885263, "naturalGas": 743.8415916}


@cache
def _table(relpath: str) -> Any:
    from greenknobs.meters.codecarbon_meter import codecarbon_data_dir  # locates the data without importing codecarbon

    base = codecarbon_data_dir()
    if base is None:
        raise RuntimeError("carbon intensity needs CodeCarbon's offline data: pip install codecarbon")
    with open(os.path.join(base, relpath), encoding="utf-8") as f:
        return json.load(f)


def _world_average() -> tuple[float, str]:
    per_source = _table("private_infra/carbon_intensity_per_source.json")
    return float(per_source["world_average"]), f"world average ({per_source['world_average_source']})"


def _country(iso: str) -> tuple[float, str]:
    mix = _table("private_infra/global_energy_mix.json")
    row = mix.get(iso)
    if row is None or row.get("carbon_intensity") is None:
        g, src = _world_average()
        return g, f"no data for {iso}: {src}"
    return float(row["carbon_intensity"]), f"{row.get('country_name', iso)} {row.get('year', '')} grid mean"


def _usa(region: str) -> tuple[float, str]:
    data = _table("private_infra/2023/usa_emissions.json")
    key = region.lower()
    row = data.get(key) or next((v for k, v in data.items() if not k.startswith("_")
                                 and v.get("regionCode", "").lower() == key), None)
    if row is None:
        raise ValueError(f"no US state or region {region!r} in CodeCarbon's eGRID table")
    meta = data.get("_source", {})
    return row["emissions"] * G_PER_LB / 1000.0, f"{meta.get('name', 'EPA eGRID')}, {region}"


def _canada(region: str) -> tuple[float, str]:
    data = _table("private_infra/2023/canada_energy_mix.json")
    row = data.get(region.lower())
    if row is None:
        raise ValueError(f"no Canadian province {region!r} in CodeCarbon's table")
    g = sum(row.get(f, 0.0) / row["total"] * factor for f, factor in CANADA_FUEL_G_PER_KWH.items())
    return g, f"CodeCarbon Canada energy mix 2023, {region} (fossil shares x per-fuel factors)"


def _nordic(region: str) -> tuple[float, str]:
    data = _table("private_infra/nordic_emissions.json")["data"]
    row = data.get(region.upper())
    if row is None:
        raise ValueError(f"no Nordic bidding zone {region!r}; known: {', '.join(data)}")
    return float(row["emission_factor"]), f"{row['description']} {row.get('year', '')} (CodeCarbon nordic table)"


def _china(region: str) -> tuple[float, str]:
    data = _table("private_infra/2023/china_provincial_emissions.json")["data"]
    key = region.lower()
    for code, row in data.items():
        if code.lower() == key or key in row.get("names", []):
            return float(row["emission_factor"]), f"{row['description']} {row.get('year', '')} provincial factor"
    raise ValueError(f"no Chinese province {region!r} in CodeCarbon's table")


REGIONAL = {"USA": _usa, "CAN": _canada, "CHN": _china, **{c: _nordic for c in NORDIC}}


def carbon_intensity(country_iso_code: str, region: str | None = None) -> tuple[float, str]:
    """(g CO2e per kWh, source) for a 3-letter country code and an optional region."""
    iso = country_iso_code.upper()
    if region:
        if iso not in REGIONAL:
            raise ValueError(f"no regional data for {iso}; regions exist for {', '.join(REGIONAL)}")
        g, src = REGIONAL[iso](region)
    else:
        g, src = _country(iso)
    return g, f"CodeCarbon offline data: {src}"

