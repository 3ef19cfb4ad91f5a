"""Set, read back and restore NVIDIA GPU power limits (for the ``system.gpu_power_limit`` knob).

Setting a limit needs root (or a permissive driver setting): we only claim a limit took effect
after reading it back, because ``nvmlDeviceSetPowerManagementLimit`` in nvidia-ml-py 13.615 can
ignore the driver's error code. Every limit we change is restored by ``restore()`` -- called by
the knob's ``release``, which the trial runner always runs -- and, as a last resort, at exit.
"""

from __future__ import annotations

import atexit
from typing import Any

from greenknobs.devices import nvml as nvml_device

_ORIGINAL_MW: dict[int, int] = {}  # GPU index -> limit before we touched it


def _nvml():
    return nvml_device.nvml()


def _handles() -> list[tuple[int, Any]]:
    nv = _nvml()
    return [(i, nv.nvmlDeviceGetHandleByIndex(i)) for i in nvml_device.visible_gpu_indices(nv.nvmlDeviceGetCount())]


def why_not_settable() -> str | None:
    """None when this process may change the limit of every visible GPU, else the reason."""
    try:
        nv = _nvml()
        nv.nvmlInit()
    except Exception as exc:  # no library, no driver
        return f"NVML is not available ({type(exc).__name__}: {exc})"
    try:
        handles = _handles()
        if not handles:
            return "NVML sees no visible GPU"
        for i, h in handles:
            current = nv.nvmlDeviceGetPowerManagementLimit(h)
            try:  # setting the limit to its current value changes nothing and proves permission
                nv.nvmlDeviceSetPowerManagementLimit(h, current)
            except nv.NVMLError as exc:
                return f"GPU {i}: NVML refused to set the power limit ({exc}); it needs root or admin rights"
        return None
    finally:
        nv.nvmlShutdown()


def read_limits_w() -> dict[int, float]:
    nv = _nvml()
    nv.nvmlInit()
    try:
        return {i: nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0 for i, h in _handles()}
    finally:
        nv.nvmlShutdown()


def set_fraction_of_default(fraction: float) -> dict[int, dict[str, float]]:
    """Set each visible GPU's limit to ``fraction`` x its default limit, clamped to the allowed range."""
    nv = _nvml()
    nv.nvmlInit()
    try:
        out = {}
        for i, h in _handles():
            default = nv.nvmlDeviceGetPowerManagementDefaultLimit(h)
            lo, hi = nv.nvmlDeviceGetPowerManagementLimitConstraints(h)
            target = int(min(max(default * fraction, lo), hi))
            _ORIGINAL_MW.setdefault(i, nv.nvmlDeviceGetPowerManagementLimit(h))
            nv.nvmlDeviceSetPowerManagementLimit(h, target)
            out[i] = {"target_w": target / 1000.0, "default_w": default / 1000.0,
                      "read_back_w": nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0}
        return out
    finally:
        nv.nvmlShutdown()


def changed() -> bool:
    """Whether some limit set by this process is still in place."""
    return bool(_ORIGINAL_MW)


def restore() -> dict[int, float]:
    """Put back every limit we changed; return the restored values (W)."""
    if not _ORIGINAL_MW:
        return {}
    nv = _nvml()
    nv.nvmlInit()
    try:
        restored = {}
        for i, mw in list(_ORIGINAL_MW.items()):
            nv.nvmlDeviceSetPowerManagementLimit(nv.nvmlDeviceGetHandleByIndex(i), mw)
            restored[i] = mw / 1000.0
            del _ORIGINAL_MW[i]
        return restored
    finally:
        nv.nvmlShutdown()


atexit.register(lambda: _ORIGINAL_MW and restore())
