"""NVML (nvidia-ml-py): the only module that imports pynvml.

Device discovery shared by the GPU meters and the power-limit control: which GPUs this process
may use, and why NVML is unusable when it is.
"""

from __future__ import annotations

import os
from typing import Any

from greenknobs.phases import Availability


def nvml():
    import pynvml  # provided by nvidia-ml-py

    return pynvml


def visible_gpu_indices(count: int) -> list[int]:
    """NVML indices of the GPUs this process may use, honouring CUDA_VISIBLE_DEVICES.

    Assumes CUDA and NVML enumerate in the same (PCI bus) order: set CUDA_DEVICE_ORDER=PCI_BUS_ID.
    UUID/MIG entries cannot be mapped to a whole-GPU counter and are skipped.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    out = []
    for tok in visible.split(","):
        tok = tok.strip()
        if not tok.isdigit():
            break  # CUDA stops enumerating at the first invalid entry
        if int(tok) < count:
            out.append(int(tok))
    return out


def probe_nvml() -> Availability:
    try:
        nv = nvml()
    except ImportError:
        return Availability(False, "nvidia-ml-py (pynvml) is not installed")
    try:
        nv.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded: both mean "not here"
        return Availability(False, f"NVML library not found or no NVIDIA driver ({exc})")
    try:
        count = nv.nvmlDeviceGetCount()
        try:
            visible = visible_handles(nv)
        except nv.NVMLError as exc:  # a UUID in CUDA_VISIBLE_DEVICES that NVML does not know
            return Availability(False, f"CUDA_VISIBLE_DEVICES names a GPU NVML does not know ({exc})")
        if not visible:
            return Availability(False, f"NVML sees {count} GPU(s), none visible via CUDA_VISIBLE_DEVICES")
        return Availability(True, f"{len(visible)} visible NVIDIA GPU(s) via NVML")
    finally:
        nv.nvmlShutdown()


def text(value: Any) -> str:
    """NVML returns bytes from some bindings and str from others."""
    return value.decode() if isinstance(value, bytes) else str(value)


def visible_handles(nv) -> list[tuple[str, Any]]:
    """(label, handle) of every GPU this process may use. NVML ignores CUDA_VISIBLE_DEVICES, so it is
    resolved here: index entries by index, ``GPU-...``/``MIG-...`` entries by UUID (how a worker
    bound to one GPU names it, stable across reboots and enumeration order)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = nv.nvmlDeviceGetCount()
    if visible is None or not visible.strip().startswith(("GPU-", "MIG-")):
        return [(f"gpu{i}", nv.nvmlDeviceGetHandleByIndex(i)) for i in visible_gpu_indices(count)]
    out = []
    for tok in visible.split(","):
        tok = tok.strip()
        if not tok.startswith(("GPU-", "MIG-")):
            break
        handle = nv.nvmlDeviceGetHandleByUUID(tok)
        out.append((f"gpu{nv.nvmlDeviceGetIndex(handle)}", handle))
    return out
