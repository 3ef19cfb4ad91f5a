"""One contract, every meter: the real cpu-model and CodeCarbon, and zeus/nvml/rapl/composite on fakes."""

from __future__ import annotations

import time

import pytest

from greenknobs.meters.base import Availability, EnergyMeter
from greenknobs.meters.codecarbon_meter import CodeCarbonMeter
from greenknobs.meters.composite import CompositeMeter
from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.meters.nvml import NvmlMeter
from greenknobs.meters.rapl import RaplMeter
from greenknobs.meters.zeus_meter import ZeusMeter
from greenknobs.phases import MEASURED, MODELLED, Measurement, combine_provenance
from test_meters_fakes import FakeGpu, FakePowercap, install_fake_nvml


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(1000))


# Each case: build(monkeypatch, tmp_path) -> (meter, tick), where tick() advances fake counters.
def _cpu_model(mp, tmp):
    return CpuModelMeter(watts_per_busy_core=5.0), lambda: None


def _codecarbon(mp, tmp):
    return CodeCarbonMeter("GBR"), lambda: None


def _nvml(mp, tmp):
    install_fake_nvml(mp, [FakeGpu(120.0)])
    return NvmlMeter(synchronize=None), lambda: None


def _nvml_sampled(mp, tmp):
    install_fake_nvml(mp, [FakeGpu(90.0, counter=False)])
    return NvmlMeter(sample_period_s=0.01, synchronize=None), lambda: None


def _rapl(mp, tmp):
    cap = FakePowercap(tmp / "powercap")
    return RaplMeter(cap.root, poll_s=0), lambda: cap.advance(package_j=2.0, dram_j=0.5)


def _zeus(mp, tmp):
    install_fake_nvml(mp, [FakeGpu(200.0)])
    mp.setattr("zeus.monitor.energy.sync_execution_fn", lambda gpus, sync_with: None)
    cap = FakePowercap(tmp / "powercap")
    return ZeusMeter(rapl_root=cap.root, rapl_poll_s=0), lambda: cap.advance(package_j=2.0, dram_j=0.5)


def _composite(mp, tmp):
    install_fake_nvml(mp, [FakeGpu(120.0)])
    return CompositeMeter(NvmlMeter(synchronize=None), CpuModelMeter()), lambda: None


CASES = {"cpu-model": _cpu_model, "codecarbon": _codecarbon, "nvml": _nvml, "nvml-sampled": _nvml_sampled,
         "rapl": _rapl, "zeus": _zeus, "composite": _composite}


@pytest.fixture(params=list(CASES))
def metered(request, monkeypatch, tmp_path):
    meter, tick = CASES[request.param](monkeypatch, tmp_path)
    yield meter, tick
    meter.close()


def test_window_returns_a_labelled_consistent_measurement(metered):
    meter, tick = metered
    started = time.perf_counter()
    with meter.window("phase") as w:
        _busy(0.15)
        tick()
    elapsed = time.perf_counter() - started
    m = w.measurement
    assert isinstance(m, Measurement)
    assert m.meter == meter.label
    assert m.provenance in (MEASURED, MODELLED)
    assert m.components and set(m.components) <= {"cpu", "gpu", "dram", "ram"}
    assert m.provenance == combine_provenance([c["provenance"] for c in m.components.values()])
    assert m.energy_j == pytest.approx(sum(c["energy_j"] for c in m.components.values()))
    assert m.energy_j > 0
    assert m.meter_params and m.meter_params == meter.params()
    assert 0 < m.time_s <= elapsed + 0.5
    assert m.repeats == 1 and m.spread_j == 0.0


def test_keys_are_unique_and_must_exist(metered):
    meter, _ = metered
    meter.begin_window("a")
    with pytest.raises(ValueError):
        meter.begin_window("a")
    meter.end_window("a")
    with pytest.raises(ValueError):
        meter.end_window("a")
    with pytest.raises(ValueError):
        meter.end_window("never-opened")


def test_windows_may_overlap(metered):
    meter, tick = metered
    meter.begin_window("outer")
    _busy(0.05)
    meter.begin_window("inner")
    _busy(0.05)
    tick()
    inner = meter.end_window("inner")
    outer = meter.end_window("outer")
    assert outer.time_s >= inner.time_s
    assert outer.energy_j >= inner.energy_j * 0.99


def test_probe_says_yes_or_why_not(metered):
    meter, _ = metered
    a = type(meter).probe()
    assert isinstance(a, Availability) and isinstance(a.available, bool) and a.reason
    assert isinstance(meter, EnergyMeter) and meter.resolution_s > 0
