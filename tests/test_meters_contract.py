"""The meter contract (greenknobs.testing.meter_contract), parametrised over the meter registry:
the real cpu-model and CodeCarbon, and zeus/nvml/rapl/composite on fake hardware. A meter added
to the registry is tested here automatically (on the real machine when no fake builder is known)."""

from __future__ import annotations

import pytest

from greenknobs.meters import METERS
from greenknobs.meters.codecarbon_meter import CodeCarbonMeter
from greenknobs.meters.composite import CompositeMeter
from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.meters.nvml import NvmlMeter
from greenknobs.meters.rapl import RaplMeter
from greenknobs.meters.zeus_meter import ZeusMeter
from greenknobs.testing import meter_contract as C
from greenknobs.testing.fakes import FakeGpu, FakePowercap, install_fake_nvml


# Each builder: (monkeypatch, tmp_path) -> (meter, tick), where tick() advances fake counters.
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


BUILDERS = {"cpu-model": _cpu_model, "codecarbon": _codecarbon, "nvml": _nvml, "nvml-sampled": _nvml_sampled,
            "rapl": _rapl, "zeus": _zeus, "composite": _composite}


def _on_this_machine(name):
    def build(mp, tmp):
        cls = METERS[name]
        a = cls.probe()
        if not a.available:
            pytest.skip(f"meter {name!r} has no fake builder and is unavailable here: {a.reason}")
        return cls(), lambda: None
    return build


CASES = {**BUILDERS, **{n: _on_this_machine(n) for n in METERS if n not in BUILDERS}}


def test_every_registered_meter_has_a_case():
    assert set(METERS) <= set(CASES)


@pytest.fixture(params=sorted(CASES))
def metered(request, monkeypatch, tmp_path):
    meter, tick = CASES[request.param](monkeypatch, tmp_path)
    yield meter, tick
    meter.close()


def test_window_returns_a_labelled_consistent_measurement(metered):
    C.check_window(*metered)


def test_keys_are_unique_and_must_exist(metered):
    C.check_keys(metered[0])


def test_windows_may_overlap(metered):
    C.check_overlap(*metered)


def test_probe_says_yes_or_why_not(metered):
    C.check_probe(metered[0])


def test_check_meter_in_one_line():
    C.check_meter(CpuModelMeter())
