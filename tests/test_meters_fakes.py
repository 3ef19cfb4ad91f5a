"""What the hardware stand-ins (greenknobs.testing.fakes) drive: NVML counters and samples,
CUDA_VISIBLE_DEVICES, RAPL wrap-around and probes."""

from __future__ import annotations

import os
import time

import pytest

from greenknobs.devices.nvml import nvml, probe_nvml, visible_gpu_indices
from greenknobs.meters.nvml import NvmlMeter
from greenknobs.meters.rapl import RaplMeter, RaplReader, probe_rapl
from greenknobs.phases import MEASURED
from greenknobs.testing.fakes import FakeGpu, FakePowercap, install_fake_nvml


@pytest.fixture
def fake_powercap(tmp_path):
    return FakePowercap(tmp_path / "powercap")


# -- NVML --------------------------------------------------------------------------------------
def test_nvml_counter_follows_the_fake_power(monkeypatch):
    forbidden = install_fake_nvml(monkeypatch, [FakeGpu(150.0), FakeGpu(60.0)])
    meter = NvmlMeter(synchronize=None)
    with meter.window("w") as w:
        time.sleep(0.2)
    m = w.measurement
    per = m.components["gpu"]["per_device_j"]
    assert per["gpu0"] / m.time_s == pytest.approx(150.0, rel=0.1)
    assert per["gpu1"] / m.time_s == pytest.approx(60.0, rel=0.1)
    assert m.meter_params["method"] == {"gpu0": "total_energy_counter", "gpu1": "total_energy_counter"}
    assert m.provenance == MEASURED
    limits = meter.power_limits_w()
    assert limits[0] == {"gpu": 0, "name": "Fake GPU", "limit_w": 250.0, "default_w": 250.0,
                         "min_w": 100.0, "max_w": 300.0}
    meter.close()
    assert forbidden == []


def test_nvml_integrates_power_samples_where_there_is_no_counter(monkeypatch):
    install_fake_nvml(monkeypatch, [FakeGpu(80.0, counter=False)])
    meter = NvmlMeter(sample_period_s=0.02, synchronize=None)
    with meter.window("w") as w:
        time.sleep(0.2)
    meter.close()
    m = w.measurement
    assert m.meter_params["method"] == {"gpu0": "power_samples"}
    assert m.meter_params["sample_period_s"] == 0.02
    assert m.avg_power_w == pytest.approx(80.0, rel=0.1)


def test_nvml_honours_cuda_visible_devices(monkeypatch):
    install_fake_nvml(monkeypatch, [FakeGpu(100.0), FakeGpu(40.0), FakeGpu(70.0)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert visible_gpu_indices(3) == [2, 0]
    meter = NvmlMeter(synchronize=None)
    with meter.window("w") as w:
        time.sleep(0.1)
    meter.close()
    per = w.measurement.components["gpu"]["per_device_j"]
    assert set(per) == {"gpu2", "gpu0"}
    assert per["gpu2"] / w.measurement.time_s == pytest.approx(70.0, rel=0.15)


def test_nvml_synchronises_before_each_read(monkeypatch):
    install_fake_nvml(monkeypatch, [FakeGpu(100.0)])
    calls = []
    meter = NvmlMeter(synchronize=lambda: calls.append("sync"))
    with meter.window("w"):
        calls.append("work")
    meter.close()
    assert calls == ["sync", "work", "sync"]


def test_visible_devices_edge_cases(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpu_indices(4) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,7,3")  # 7 does not exist: CUDA skips it here
    assert visible_gpu_indices(4) == [1, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234,0")  # a UUID stops the mapping
    assert visible_gpu_indices(4) == []


def test_nvml_probe_without_driver_says_why(monkeypatch):
    nv = nvml()

    def no_lib():
        raise nv.NVMLError(nv.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(nv, "nvmlInit", no_lib)
    a = probe_nvml()
    assert not a.available and "NVML library not found" in a.reason


# -- RAPL --------------------------------------------------------------------------------------
def test_rapl_reader_sums_package_and_dram_and_skips_core_and_psys(fake_powercap):
    reader = RaplReader(fake_powercap.root, poll_s=None)
    fake_powercap.advance(package_j=12.0, dram_j=3.0, core_j=10.0, psys_j=100.0)
    assert reader.read_j() == pytest.approx({"cpu": 12.0, "dram": 3.0})


def test_rapl_counter_wrap_around(fake_powercap):
    fake_powercap.set("intel-rapl:0", FakePowercap.MAX_UJ - 2_000_000)  # 2 J before the wrap
    meter = RaplMeter(fake_powercap.root, poll_s=0)
    meter.begin_window("w")
    fake_powercap.advance(package_j=5.0, dram_j=1.0)  # crosses max_energy_range_uj
    assert fake_powercap.value("intel-rapl:0") == 3_000_000
    m = meter.end_window("w")
    assert m.components["cpu"]["energy_j"] == pytest.approx(5.0)
    assert m.energy_j == pytest.approx(6.0)


def test_rapl_poller_sees_every_wrap_of_a_long_window(fake_powercap):
    reader = RaplReader(fake_powercap.root, poll_s=None)
    start = reader.read_j()["cpu"]
    for _ in range(3):  # three near-full laps, each seen by a poll (here: an explicit read)
        fake_powercap.advance(package_j=0.9 * FakePowercap.MAX_UJ / 1e6)
        reader.read_j()
    assert reader.read_j()["cpu"] - start == pytest.approx(3 * 0.9 * FakePowercap.MAX_UJ / 1e6, rel=1e-6)


def test_rapl_probe_reasons(tmp_path, fake_powercap):
    assert probe_rapl(str(tmp_path / "absent")).reason.startswith("no ")
    (tmp_path / "empty").mkdir()
    assert "no RAPL package zone" in probe_rapl(str(tmp_path / "empty")).reason
    assert probe_rapl(fake_powercap.root).available
    if os.geteuid() != 0:  # root reads anything; the permission case only exists for users
        os.chmod(os.path.join(fake_powercap.root, "intel-rapl:0", "energy_uj"), 0o200)
        a = probe_rapl(fake_powercap.root)
        assert not a.available and "RAPL not readable" in a.reason and "needs root" in a.reason
