"""Hardware stand-ins (a patched NVML, a powercap sysfs tree) and the tests of what they drive.

``fake_nvml`` patches pynvml's functions with GPUs whose energy counter advances with the clock
at a fixed power; ``fake_powercap`` writes a RAPL tree whose counters tests advance by hand.
"""

from __future__ import annotations

import os
import time

import pytest

from greenknobs.meters.nvml import NvmlMeter, _nvml, probe_nvml, visible_gpu_indices
from greenknobs.meters.rapl import RaplMeter, RaplReader, probe_rapl
from greenknobs.phases import MEASURED


class FakeGpu:
    """Draws ``watts`` constantly; ``counter=False`` models a pre-Volta board (power readings only)."""

    def __init__(self, watts: float, counter: bool = True):
        self.watts, self.counter, self.t0 = watts, counter, time.perf_counter()

    def energy_mj(self) -> int:
        return int((time.perf_counter() - self.t0) * self.watts * 1000)


def install_fake_nvml(monkeypatch, gpus: list[FakeGpu]) -> list[str]:
    """Patch pynvml with ``gpus``; returns the list that records any forbidden (setter) call."""
    nv = _nvml()
    forbidden: list[str] = []

    def not_supported(*_):
        raise nv.NVMLError(nv.NVML_ERROR_NOT_SUPPORTED)

    def energy(h):
        if not h.counter:
            not_supported()
        return h.energy_mj()

    patches = {
        "nvmlInit": lambda: None, "nvmlShutdown": lambda: None,
        "nvmlDeviceGetCount": lambda: len(gpus), "nvmlDeviceGetHandleByIndex": lambda i: gpus[i],
        "nvmlDeviceGetTotalEnergyConsumption": energy,
        "nvmlDeviceGetPowerUsage": lambda h: int(h.watts * 1000),
        "nvmlDeviceGetArchitecture": lambda h: nv.NVML_DEVICE_ARCH_AMPERE if h.counter else nv.NVML_DEVICE_ARCH_PASCAL,
        "nvmlDeviceGetC2cModeInfoV": not_supported,
        "nvmlDeviceGetName": lambda h: b"Fake GPU",
        "nvmlDeviceGetPowerManagementLimitConstraints": lambda h: (100_000, 300_000),
        "nvmlDeviceGetPowerManagementLimit": lambda h: 250_000,
        "nvmlDeviceGetPowerManagementDefaultLimit": lambda h: 250_000,
    }
    for name, fn in patches.items():
        monkeypatch.setattr(nv, name, fn)
    for name in ("nvmlDeviceSetPowerManagementLimit", "nvmlDeviceSetPowerManagementLimit_v2",
                 "nvmlDeviceSetPersistenceMode", "nvmlDeviceSetGpuLockedClocks", "nvmlDeviceSetMemoryLockedClocks",
                 "nvmlDeviceSetApplicationsClocks", "nvmlDeviceSetMigMode", "nvmlDeviceResetGpuLockedClocks"):
        if hasattr(nv, name):
            monkeypatch.setattr(nv, name, lambda *a, _n=name: forbidden.append(_n))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("ZEUSD_SOCK_PATH", raising=False)
    # Zeus keeps a process-wide GPU singleton; start each test from a clean one.
    monkeypatch.setattr("zeus.device.gpu._gpus", None)
    return forbidden


class FakePowercap:
    """A powercap tree: package-0 (+ dram, + core and psys that must be ignored)."""

    MAX_UJ = 262_143_328_850

    def __init__(self, root):
        self.root = str(root)
        self.zone("intel-rapl:0", "package-0", 1_000_000)
        self.zone("intel-rapl:0:0", "dram", 500_000)
        self.zone("intel-rapl:0:1", "core", 900_000)
        self.zone("intel-rapl:1", "psys", 5_000_000)

    def zone(self, entry: str, name: str, energy_uj: int) -> None:
        path = os.path.join(self.root, entry)
        os.makedirs(path, exist_ok=True)
        for fname, value in (("name", name), ("energy_uj", energy_uj), ("max_energy_range_uj", self.MAX_UJ)):
            with open(os.path.join(path, fname), "w") as f:
                f.write(f"{value}\n")

    def value(self, entry: str) -> int:
        with open(os.path.join(self.root, entry, "energy_uj")) as f:
            return int(f.read())

    def set(self, entry: str, energy_uj: int) -> None:
        with open(os.path.join(self.root, entry, "energy_uj"), "w") as f:
            f.write(f"{energy_uj % self.MAX_UJ}\n")

    def advance(self, package_j: float, dram_j: float = 0.0, core_j: float = 0.0, psys_j: float = 0.0) -> None:
        for entry, joules in (("intel-rapl:0", package_j), ("intel-rapl:0:0", dram_j),
                              ("intel-rapl:0:1", core_j), ("intel-rapl:1", psys_j)):
            self.set(entry, self.value(entry) + int(joules * 1e6))


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
    nv = _nvml()

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
