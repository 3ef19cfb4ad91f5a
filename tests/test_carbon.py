"""Carbon intensity from CodeCarbon's offline tables, and grams CO2e from joules."""

from __future__ import annotations

import json
import os

import pytest

from greenknobs.meters.carbon import carbon_intensity
from greenknobs.meters.codecarbon_meter import codecarbon_data_dir
from greenknobs.units import grams_co2e, grams_per_phase


def _json(rel: str):
    with open(os.path.join(codecarbon_data_dir(), rel)) as f:
        return json.load(f)


def test_country_intensity_is_the_table_value_with_its_source_named():
    table = _json("private_infra/global_energy_mix.json")
    g, source = carbon_intensity("gbr")
    assert g == table["GBR"]["carbon_intensity"]
    assert "CodeCarbon offline data" in source and "United Kingdom" in source
    assert carbon_intensity("FRA")[0] < carbon_intensity("DEU")[0]  # nuclear/hydro vs coal/gas


def test_unknown_country_falls_back_to_the_world_average_and_says_so():
    g, source = carbon_intensity("ZZZ")
    assert g == _json("private_infra/carbon_intensity_per_source.json")["world_average"]
    assert "no data for ZZZ" in source and "world average" in source


def test_regions():
    lbs = _json("private_infra/2023/usa_emissions.json")["texas"]["emissions"]
    assert carbon_intensity("USA", "texas")[0] == pytest.approx(lbs * 0.45359237)
    assert carbon_intensity("USA", "TX")[0] == carbon_intensity("USA", "texas")[0]
    assert "eGRID" in carbon_intensity("USA", "texas")[1]
    nordic = _json("private_infra/nordic_emissions.json")["data"]
    assert carbon_intensity("SWE", "se3")[0] == nordic["SE3"]["emission_factor"]
    assert 0 < carbon_intensity("CAN", "ontario")[0] < carbon_intensity("CAN", "alberta")[0]
    assert carbon_intensity("CHN", "beijing")[0] > 0
    with pytest.raises(ValueError, match="no US state"):
        carbon_intensity("USA", "atlantis")
    with pytest.raises(ValueError, match="no regional data for GBR"):
        carbon_intensity("GBR", "scotland")


def test_grams():
    assert grams_co2e(3.6e6, 400.0) == pytest.approx(400.0)  # 1 kWh at 400 g/kWh
    assert grams_co2e(3.6e6, 400.0, pue=1.5) == pytest.approx(600.0)
    per = grams_per_phase({"training": 7.2e6, "inference": 3.6e5}, 100.0, pue=1.2)
    assert per == pytest.approx({"training": 240.0, "inference": 12.0, "total": 252.0})
