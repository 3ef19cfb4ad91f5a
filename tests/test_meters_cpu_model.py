"""cpu-model follows the work, not the clock; CodeCarbon's figure for the same pair, side by side."""

from __future__ import annotations

import time

import pytest
import torch

from greenknobs.meters.codecarbon_meter import CodeCarbonMeter
from greenknobs.meters.cpu_model import DEFAULT_PARAMS, CpuModelMeter
from greenknobs.phases import MODELLED

SECONDS = 1.0


def busy_two_threads(seconds: float) -> None:
    """A 2-thread workload: float matmuls with torch's intra-op pool set to two threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = torch.randn(384, 384)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            a @ a
    finally:
        torch.set_num_threads(before)


def busy_vs_sleep(meter) -> dict[str, float]:
    with meter.window("busy") as busy:
        busy_two_threads(SECONDS)
    with meter.window("sleep") as sleep:
        time.sleep(SECONDS)
    b, s = busy.measurement, sleep.measurement
    return {"busy_j": b.energy_j, "sleep_j": s.energy_j, "ratio": b.energy_j / max(s.energy_j, 1e-12),
            "busy_cpu_j": b.components["cpu"]["energy_j"], "sleep_cpu_j": s.components["cpu"]["energy_j"],
            "busy_s": b.time_s, "sleep_s": s.time_s}


def test_cpu_model_follows_the_work_not_the_clock_and_codecarbon_beside_it():
    cpu_model = busy_vs_sleep(CpuModelMeter())
    cc_meter = CodeCarbonMeter("USA")  # probes the hardware while it is built, outside the windows
    codecarbon = busy_vs_sleep(cc_meter)
    cc_meter.close()
    print(f"\ncpu-model : busy {cpu_model['busy_j']:.2f} J, sleep {cpu_model['sleep_j']:.3f} J, "
          f"ratio {cpu_model['ratio']:.1f}x  params {DEFAULT_PARAMS}")
    print(f"codecarbon: busy {codecarbon['busy_j']:.2f} J, sleep {codecarbon['sleep_j']:.2f} J, "
          f"ratio {codecarbon['ratio']:.1f}x  (cpu part {codecarbon['busy_cpu_j']:.2f} "
          f"vs {codecarbon['sleep_cpu_j']:.2f} J)")
    assert cpu_model["ratio"] >= 5.0
    assert codecarbon["busy_cpu_j"] > codecarbon["sleep_cpu_j"]  # its load model sees the work too


def test_cpu_model_parameters_are_overridable_and_shown():
    meter = CpuModelMeter(watts_per_busy_core=10.0, base_watts=2.0, watts_per_gb=0.0)
    with meter.window("w") as w:
        busy_two_threads(0.2)
    m = w.measurement
    cpu_s = m.components["cpu"]["cpu_s"]
    assert m.provenance == MODELLED
    assert m.components["cpu"]["energy_j"] == pytest.approx(cpu_s * 10.0 + m.time_s * 2.0)
    assert m.meter_params["watts_per_busy_core"] == 10.0 and m.meter_params["base_watts"] == 2.0
    assert "model" in m.meter_params
    assert "watts_per_busy_core=10.0" in m.label()
    with pytest.raises(ValueError, match="unknown cpu-model parameter"):
        CpuModelMeter(watts_per_thread=3)


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def _spin_then_idle(seconds: float, idle_s: float) -> None:
    _spin(seconds)
    time.sleep(idle_s)


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_cpu_model_counts_worker_processes_however_started(start_method):
    """Workers that finish (and are reaped) inside the window, and a worker still alive at its end."""
    import multiprocessing as mp

    ctx = mp.get_context(start_method)
    meter = CpuModelMeter()
    try:
        with meter.window("w") as w:
            done = ctx.Process(target=_spin, args=(0.6,))
            done.start()
            done.join()
            alive = ctx.Process(target=_spin_then_idle, args=(0.4, 30.0))
            alive.start()
            time.sleep(0.05)
            while alive.is_alive():  # wait until it has spun, then end the window while it still lives
                try:
                    import psutil

                    t = psutil.Process(alive.pid).cpu_times()
                    if t.user + t.system >= 0.35:  # 0.4 s of spinning, read in 10 ms ticks
                        break
                except psutil.Error:
                    break
                time.sleep(0.05)
        cpu_s = w.measurement.components["cpu"]["cpu_s"]
    finally:
        alive.terminate()
        alive.join()
        meter.close()
    # ~0.6 s in the reaped worker + ~0.4 s in the live one; the parent itself mostly waits
    assert cpu_s >= 0.85, f"{start_method}: counted {cpu_s:.2f} CPU-s of ~1.0 in workers"


def test_cpu_model_integrates_memory_over_the_window():
    """A phase that holds 400 MB for most of its window and frees it before the end is charged
    for what it held, not for the little that is resident when it ends."""
    meter = CpuModelMeter(watts_per_busy_core=0.0)
    try:
        with meter.window("w") as w:
            block = bytearray(400 * 1024 * 1024)
            block[::4096] = b"x" * len(block[::4096])  # touch every page: really resident
            time.sleep(1.2)
            del block
            time.sleep(0.05)
        ram = w.measurement.components["ram"]
    finally:
        meter.close()
    import psutil

    resident_now = psutil.Process().memory_info().rss / 1e9
    assert ram["rss_gb_mean"] > resident_now + 0.25, ram
