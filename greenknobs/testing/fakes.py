"""Hardware stand-ins: a patched NVML with GPUs that draw a fixed power, a powercap (RAPL) sysfs
tree whose counters tests advance by hand, and a power-limit NVML. GPU and RAPL code paths run
on any machine against these; setters on the real NVML are recorded as forbidden.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

from greenknobs.devices.nvml import nvml


class FakeGpu:
    """Draws ``watts`` constantly; ``counter=False`` models a pre-Volta board (power readings only).
    ``processes``: pids NVML reports as running on it (tests add a foreign one)."""

    def __init__(self, watts: float, counter: bool = True, uuid: str | None = None):
        self.watts, self.counter, self.t0 = watts, counter, time.perf_counter()
        self.uuid = uuid
        self.processes: list[int] = []

    def energy_mj(self) -> int:
        return int((time.perf_counter() - self.t0) * self.watts * 1000)


def install_fake_nvml(monkeypatch, gpus: list[FakeGpu]) -> list[str]:
    """Patch pynvml with ``gpus``; returns the list that records any forbidden (setter) call."""
    nv = nvml()
    forbidden: list[str] = []

    def not_supported(*_):
        raise nv.NVMLError(nv.NVML_ERROR_NOT_SUPPORTED)

    for i, g in enumerate(gpus):
        g.uuid = g.uuid or f"GPU-00000000-0000-0000-0000-{i:012d}"

    def by_uuid(uuid):
        for g in gpus:
            if g.uuid == uuid:
                return g
        raise nv.NVMLError(nv.NVML_ERROR_NOT_FOUND)

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
        "nvmlDeviceGetUUID": lambda h: h.uuid,
        "nvmlDeviceGetIndex": lambda h: gpus.index(h),
        "nvmlDeviceGetHandleByUUID": by_uuid,
        "nvmlDeviceGetComputeRunningProcesses": lambda h: [SimpleNamespace(pid=p, usedGpuMemory=0) for p in h.processes],
        "nvmlDeviceGetGraphicsRunningProcesses": lambda h: [],
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


class FakePowerNvml:
    """One GPU whose power limit can be read and set (or refused, or silently ignored as
    nvidia-ml-py 13.615 may do): the power-limit knob is exercised against this, never a real GPU."""

    class NVMLError(Exception):
        pass

    def __init__(self, permitted=True, honours_set=True):
        self.limit_mw = {0: 300_000}
        self.permitted, self.honours_set = permitted, honours_set

    def nvmlInit(self): pass
    def nvmlShutdown(self): pass
    def nvmlDeviceGetCount(self): return 1
    def nvmlDeviceGetHandleByIndex(self, i): return i
    def nvmlDeviceGetPowerManagementLimit(self, h): return self.limit_mw[h]
    def nvmlDeviceGetPowerManagementDefaultLimit(self, h): return 300_000
    def nvmlDeviceGetPowerManagementLimitConstraints(self, h): return (100_000, 350_000)

    def nvmlDeviceSetPowerManagementLimit(self, h, mw):
        if not self.permitted:
            raise self.NVMLError("Insufficient Permissions")
        if self.honours_set:  # nvidia-ml-py 13.615 may swallow the driver's error: read back to know
            self.limit_mw[h] = mw


def install_fake_power_nvml(monkeypatch, **kw) -> FakePowerNvml:
    """Route greenknobs.devices.power through a FakePowerNvml."""
    from greenknobs.devices import power

    nv = FakePowerNvml(**kw)
    monkeypatch.setattr(power, "_nvml", lambda: nv)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return nv
