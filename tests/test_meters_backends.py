"""Backend specifics beyond the contract: zeus on fakes, composite provenance, selection and the table."""

from __future__ import annotations

import time

import pytest

from greenknobs import meters
from greenknobs.errors import ConfigError, MeterUnavailable
from greenknobs.meters.base import Availability
from greenknobs.meters.composite import CompositeMeter
from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.meters.nvml import NvmlMeter
from greenknobs.meters.rapl import RaplMeter
from greenknobs.meters.zeus_meter import ZeusMeter
from greenknobs.phases import MEASURED, MODELLED
from greenknobs.testing.fakes import FakeGpu, FakePowercap, install_fake_nvml


def test_zeus_measures_gpu_through_zeus_and_cpu_dram_through_rapl(monkeypatch, tmp_path):
    forbidden = install_fake_nvml(monkeypatch, [FakeGpu(300.0), FakeGpu(100.0)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    synced = []
    monkeypatch.setattr("zeus.monitor.energy.sync_execution_fn", lambda gpus, sync_with: synced.append(list(gpus)))
    cap = FakePowercap(tmp_path / "powercap")
    meter = ZeusMeter(rapl_root=cap.root, rapl_poll_s=0)
    with meter.window("training") as w:
        time.sleep(0.2)
        cap.advance(package_j=30.0, dram_j=4.0)
    meter.close()
    m = w.measurement
    assert synced == [[0], [0]]  # CUDA synchronised before both reads, on CUDA's index 0 (= NVML 1)
    gpu = m.components["gpu"]
    assert set(gpu["per_device_j"]) == {"gpu1"}
    assert gpu["energy_j"] / m.time_s == pytest.approx(100.0, rel=0.15)
    assert m.components["cpu"]["energy_j"] == pytest.approx(30.0)
    assert m.components["dram"]["energy_j"] == pytest.approx(4.0)
    assert m.provenance == MEASURED
    assert m.meter_params["gpu_method"].startswith("zeus.monitor.ZeusMonitor")
    assert forbidden == []


def test_zeus_probe_without_hardware_says_why(monkeypatch):
    monkeypatch.setattr(meters.zeus_meter, "probe_nvml", lambda: Availability(False, "NVML library not found"))
    monkeypatch.setattr(meters.zeus_meter, "probe_rapl", lambda *a: Availability(False, "no /sys/class/powercap"))
    a = ZeusMeter.probe()
    assert not a.available and "NVML library not found" in a.reason and "no /sys/class/powercap" in a.reason


def test_composite_keeps_provenance_per_component_and_rolls_up_honestly(monkeypatch):
    install_fake_nvml(monkeypatch, [FakeGpu(150.0)])
    meter = CompositeMeter(NvmlMeter(synchronize=None), CpuModelMeter(watts_per_busy_core=7.0))
    with meter.window("inference") as w:
        time.sleep(0.1)
    meter.close()
    m = w.measurement
    assert m.meter == "nvml+cpu-model"
    assert m.components["gpu"]["provenance"] == MEASURED and m.components["gpu"]["meter"] == "nvml"
    assert m.components["cpu"]["provenance"] == MODELLED and m.components["cpu"]["meter"] == "cpu-model"
    assert m.provenance == MODELLED  # any modelled part makes the total modelled
    assert m.meter_params["cpu-model.watts_per_busy_core"] == 7.0
    assert m.meter_params["nvml.method"] == {"gpu0": "total_energy_counter"}


def test_composite_refuses_overlapping_parts(tmp_path):
    cap = FakePowercap(tmp_path / "powercap")
    rapl = RaplMeter(cap.root, poll_s=0)
    with pytest.raises(ValueError, match="both measure cpu"):
        CompositeMeter(rapl, CpuModelMeter())
    rapl.close()


def _probes(monkeypatch, gpu: bool, rapl: bool, zeus: bool = True):
    ok, no = Availability(True, "ok"), Availability(False, "absent")
    monkeypatch.setattr(NvmlMeter, "probe", classmethod(lambda cls: ok if gpu else no))
    monkeypatch.setattr(RaplMeter, "probe", classmethod(lambda cls: ok if rapl else no))
    monkeypatch.setattr(ZeusMeter, "probe", classmethod(lambda cls: ok if zeus and (gpu or rapl) else no))


@pytest.mark.parametrize("gpu, rapl, zeus, expected", [
    (True, True, True, "zeus"), (True, False, True, "composite"), (False, True, True, "zeus"),
    (False, True, False, "rapl"), (False, False, True, "cpu-model")])
def test_auto_prefers_the_most_measured_option(monkeypatch, gpu, rapl, zeus, expected):
    _probes(monkeypatch, gpu, rapl, zeus)
    assert meters.auto_choice()[0] == expected


def test_auto_here_is_cpu_model_with_its_parameters():
    # This machine (and CI) has neither NVML nor RAPL; where one exists, auto must measure, not model.
    if NvmlMeter.probe().available or RaplMeter.probe().available:
        assert meters.auto_choice()[0] != "cpu-model"
        return
    m = meters.create_meter("auto", {"watts_per_busy_core": 6.0})
    assert m.name == "cpu-model" and m.params()["watts_per_busy_core"] == 6.0
    with pytest.raises(MeterUnavailable, match="NVML"):
        meters.create_meter("nvml")
    with pytest.raises(MeterUnavailable, match="no GPU part|no GPU meter"):
        meters.create_meter("composite")


def test_create_meter_rejects_unknown_names_and_params():
    with pytest.raises(ConfigError, match="meter.name"):
        meters.create_meter("joulemeter")
    with pytest.raises(ConfigError, match="meter.params"):
        meters.create_meter("cpu-model", {"watts_per_gpu": 1})


def test_meter_table_rows():
    rows = meters.meter_table()
    by_name = {r["meter"]: r for r in rows}
    assert set(by_name) == {"zeus", "nvml", "rapl", "codecarbon", "cpu-model", "composite"}
    assert sum(r["auto"] for r in rows) == 1
    for r in rows:
        assert {"meter", "available", "measures", "provenance", "reason", "resolution_s"} <= set(r)
        assert r["reason"]
    assert by_name["cpu-model"]["available"] and by_name["cpu-model"]["provenance"] == MODELLED
    assert by_name["cpu-model"]["params"]["watts_per_busy_core"] == 4.0
    assert by_name["composite"]["measures"] == "gpu/cpu/dram/ram"


def test_registry_builds_composites_on_a_gpu_machine(monkeypatch):
    install_fake_nvml(monkeypatch, [FakeGpu(100.0)])
    monkeypatch.setattr(RaplMeter, "probe", classmethod(lambda cls: Availability(False, "no RAPL")))
    monkeypatch.setattr("zeus.monitor.energy.sync_execution_fn", lambda gpus, sync_with: None)
    auto = meters.create_meter("auto", {"watts_per_busy_core": 3.0})
    try:
        assert isinstance(auto, CompositeMeter) and auto.label == "zeus+cpu-model"
        with auto.window("w") as w:
            time.sleep(0.05)
        assert set(w.measurement.components) == {"gpu", "cpu", "ram"}  # zeus built without RAPL here
        assert w.measurement.meter_params["cpu-model.watts_per_busy_core"] == 3.0
    finally:
        auto.close()
    explicit = meters.create_meter("composite", {"gpu": "nvml"})
    assert explicit.label == "nvml+cpu-model"
    explicit.close()
    with pytest.raises(ConfigError, match="meter.params.gpu"):
        meters.create_meter("composite", {"gpu": "codecarbon"})


def test_gpu_check_script_plumbing_on_fakes(monkeypatch):
    """The real script's windows and read-only limit check, driven by the fake NVML and a CPU workload."""
    import importlib.util
    import pathlib

    forbidden = install_fake_nvml(monkeypatch, [FakeGpu(250.0)])
    monkeypatch.setattr("zeus.monitor.energy.sync_execution_fn", lambda gpus, sync_with: None)
    path = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = gpu_check.run_checks("cpu", seconds=0.2, steps=2, idle_s=0.1)
    assert out["power_limits"][0]["max_w"] == 300.0
    by = {(r["workload"], r["meter"]): r for r in out["rows"]}
    assert set(by) == {(w, m) for w in ("idle", "matmul", "finetune") for m in ("zeus", "nvml")}
    for w in ("matmul", "finetune"):
        assert by[(w, "zeus")]["gpu_j"] == pytest.approx(by[(w, "nvml")]["gpu_j"], rel=0.1)
        assert by[(w, "nvml")]["avg_w"] == pytest.approx(250.0, rel=0.15)
    assert forbidden == []
