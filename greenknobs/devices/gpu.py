"""One worker, one GPU: bind a worker to a GPU by UUID, hold that GPU exclusively for the
worker's lifetime, and notice when another process runs on it (whose energy would otherwise be
counted as the trial's).

Binding sets CUDA_VISIBLE_DEVICES to the GPU's UUID before CUDA is initialised, so the framework
sees exactly that GPU as device 0, and the meters resolve the same UUID through NVML (which
ignores CUDA_VISIBLE_DEVICES and numbers GPUs its own way).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from greenknobs.devices.nvml import nvml, text
from greenknobs.errors import GreenknobsError
from greenknobs.processes import Held, OwnerLock

LOCK_DIR = Path(os.environ.get("GREENKNOBS_LOCK_DIR", "/tmp/greenknobs-gpu-locks"))
_HELD: dict[str, OwnerLock] = {}  # uuid -> its lock: released at release() or when the process ends


def _handle(nv, spec: str):
    if spec.startswith(("GPU-", "MIG-")):
        return nv.nvmlDeviceGetHandleByUUID(spec)
    if spec.isdigit():
        return nv.nvmlDeviceGetHandleByIndex(int(spec))
    raise GreenknobsError(f"--gpu: expected an NVML index or a GPU UUID (GPU-...), got {spec!r}")


def bind(spec: str) -> dict[str, Any]:
    """Bind this process to one GPU (index or UUID): exclusive for its lifetime, visible to CUDA
    as its only device. Refuses when another greenknobs worker holds it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        raise GreenknobsError("--gpu must be bound before CUDA is initialised in this process")
    nv = nvml()
    try:
        nv.nvmlInit()
    except Exception as exc:
        raise GreenknobsError(f"--gpu {spec}: NVML is not available ({exc})") from None
    try:
        handle = _handle(nv, spec)
        uuid, index, name = text(nv.nvmlDeviceGetUUID(handle)), nv.nvmlDeviceGetIndex(handle), text(nv.nvmlDeviceGetName(handle))
    except nv.NVMLError as exc:
        raise GreenknobsError(f"--gpu {spec}: no such GPU ({exc})") from None
    finally:
        nv.nvmlShutdown()
    try:
        _HELD[uuid] = OwnerLock(LOCK_DIR / f"{uuid}.lock", f"greenknobs pid {os.getpid()}")
    except Held as held:
        raise GreenknobsError(f"GPU {uuid} (index {index}) is already bound to {held.holder}: one worker per GPU") from None
    os.environ["CUDA_VISIBLE_DEVICES"] = uuid
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return {"uuid": uuid, "index": index, "name": name}


def release(uuid: str) -> None:
    lock = _HELD.pop(uuid, None)
    if lock is not None:
        lock.close()


def _ancestors(pid: int) -> set[int]:
    out = set()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def foreign_processes(uuid: str) -> list[int]:
    """Processes on the GPU that are neither this worker nor its descendants."""
    nv = nvml()
    nv.nvmlInit()
    try:
        handle = nv.nvmlDeviceGetHandleByUUID(uuid)
        procs = list(nv.nvmlDeviceGetComputeRunningProcesses(handle)) + list(nv.nvmlDeviceGetGraphicsRunningProcesses(handle))
    finally:
        nv.nvmlShutdown()
    me = os.getpid()
    return sorted({int(p.pid) for p in procs if me not in _ancestors(int(p.pid))})
