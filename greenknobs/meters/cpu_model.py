"""The honest fallback: energy *modelled* from the CPU time and memory of this process tree.

    E = cpu_seconds × watts_per_busy_core  +  wall_seconds × base_watts  +  ∫ resident_GB dt × watts_per_gb

cpu_seconds counts every process the trial ran, however it was started (fork, spawn, forkserver):
this process and the children it reaped (getrusage), plus every live descendant and what *they*
reaped (psutil), read at both window edges and differenced. A DataLoader worker or a
forkserver's grandchild is therefore counted whether it is still alive or already gone. The figure
follows this process tree's CPU time, not the clock and not other processes' CPU time -- but other
processes' load still moves it: threads that must share their cores run longer and stall, and
OpenMP threads that *spin* while they wait burn CPU-seconds that grow with the neighbours' load.
greenknobs makes waiting OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE, set before torch loads:
runtime.prefer_passive_thread_waits), and every phase window records the host's load beside it and
is marked when contended (meters/host_load.py, meters/noise.py).
Resident memory (RSS of the same tree) is sampled every ``sample_s`` seconds by a background
thread and at both window edges, and integrated over the window (GB·s), so a phase that peaks
and frees memory is charged for what it held, not for whatever is resident when it ends.

Defaults and their sources:
  watts_per_busy_core 4.0  — CodeCarbon's fallback for an unknown CPU (4 W per thread at full load)
  watts_per_gb        0.375 — CodeCarbon's classic RAM model (3 W per 8 GB)
  base_watts          0.0  — idle/static power is not attributed to the process by default
Every figure is labelled "modelled" and carries these parameters.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import psutil

from greenknobs.meters.base import Availability, EnergyMeter, WindowRegistry
from greenknobs.phases import MODELLED, Measurement
from greenknobs.runtime import process_cpu_seconds

DEFAULT_PARAMS = {"watts_per_busy_core": 4.0, "watts_per_gb": 0.375, "base_watts": 0.0}
SAMPLE_S = 0.5  # RSS sampling period; window edges are always sampled as well


_PROC_CHILDREN = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists()


def _child_pids(pid: int) -> list[int]:
    """Children of ``pid`` from /proc/<pid>/task/*/children: a few small reads, where psutil's
    children() reads every process's stat file on the host (slow with many workers per host)."""
    pids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                pids.extend(int(x) for x in fh.read().split())
        except OSError:  # the thread or process ended meanwhile
            continue
    return pids


def _descendants(me: psutil.Process) -> list[psutil.Process]:
    if not _PROC_CHILDREN:  # no such file (non-Linux, or a kernel without CONFIG_PROC_CHILDREN)
        try:
            return me.children(recursive=True)
        except psutil.Error:
            return []
    out: list[psutil.Process] = []
    todo = _child_pids(me.pid)
    while todo:
        pid = todo.pop()
        try:
            out.append(psutil.Process(pid))
        except psutil.Error:  # gone between listing and reading: its time is with whoever reaped it
            continue
        todo.extend(_child_pids(pid))
    return out


def tree_cpu_seconds(me: psutil.Process | None = None) -> float:
    """CPU seconds of this process (+ reaped children) and of every live descendant (+ what each
    reaped). A process moving from 'live' to 'reaped' moves its time between the two sums, so
    differences across a window stay exact."""
    me = me or psutil.Process()
    total = process_cpu_seconds()
    for child in _descendants(me):
        try:
            t = child.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:  # gone between listing and reading: its time is with whoever reaped it
            continue
    return total


def tree_rss_bytes(me: psutil.Process | None = None) -> int:
    me = me or psutil.Process()
    total = 0
    for proc in (me, *_descendants(me)):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


class RssIntegrator:
    """∫ RSS dt of the process tree (GB·s), sampled by a daemon thread; read like a counter."""

    def __init__(self, period_s: float = SAMPLE_S):
        self._me = psutil.Process()
        self._lock = threading.Lock()
        self._t = time.perf_counter()
        self._gb = tree_rss_bytes(self._me) / 1e9
        self._gb_s = 0.0
        self.samples = 1
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), name="cpu-model-rss", daemon=True)
        self._thread.start()

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            self.read_gb_s()

    def read_gb_s(self) -> float:
        with self._lock:
            t, gb = time.perf_counter(), tree_rss_bytes(self._me) / 1e9
            self._gb_s += (self._gb + gb) / 2 * (t - self._t)  # trapezoid
            self._t, self._gb = t, gb
            self.samples += 1
            return self._gb_s

    def current_gb(self) -> float:
        return self._gb

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)


class CpuModelMeter(EnergyMeter):
    name = "cpu-model"
    provenance = MODELLED
    measures = ("cpu", "ram")
    resolution_s = 0.01  # getrusage advances in scheduler ticks (4-10 ms) on most kernels

    def __init__(self, **params: Any):
        unknown = set(params) - set(DEFAULT_PARAMS)
        if unknown:
            raise ValueError(f"unknown cpu-model parameter(s): {', '.join(sorted(unknown))}")
        self._params = {**DEFAULT_PARAMS, **{k: float(v) for k, v in params.items()}}
        self._windows = WindowRegistry(self.name)
        self._process = psutil.Process()
        self._rss: RssIntegrator | None = None  # started with the first window, stopped by close()

    @classmethod
    def probe(cls) -> Availability:
        return Availability(True, "always available (a model, not a measurement)")

    def params(self) -> dict[str, Any]:
        return {"model": "cpu_seconds*watts_per_busy_core + wall_s*base_watts + integral(rss_gb dt)*watts_per_gb",
                "counts": "this process tree: self, reaped children, live descendants (fork/spawn/forkserver)",
                "rss_sample_s": SAMPLE_S, **self._params}

    def begin_window(self, key: str) -> None:
        if self._rss is None:
            self._rss = RssIntegrator()
            weakref.finalize(self, self._rss.close)  # a meter dropped without close() still stops its thread
        self._windows.open(key, (time.perf_counter(), tree_cpu_seconds(self._process), self._rss.read_gb_s()))

    def end_window(self, key: str) -> Measurement:
        wall0, cpu0, gbs0 = self._windows.close(key)
        assert self._rss is not None
        gb_s = self._rss.read_gb_s() - gbs0
        wall = time.perf_counter() - wall0
        cpu = tree_cpu_seconds(self._process) - cpu0
        p = self._params
        cpu_j = cpu * p["watts_per_busy_core"] + wall * p["base_watts"]
        ram_j = gb_s * p["watts_per_gb"]
        return Measurement(
            energy_j=cpu_j + ram_j,
            time_s=wall,
            provenance=MODELLED,
            meter=self.name,
            components={
                "cpu": {"energy_j": cpu_j, "provenance": MODELLED, "cpu_s": cpu},
                "ram": {"energy_j": ram_j, "provenance": MODELLED, "rss_gb_s": gb_s,
                        "rss_gb_mean": gb_s / wall if wall > 0 else self._rss.current_gb()},
            },
            meter_params=self.params(),
        )

    def close(self) -> None:
        if self._rss is not None:
            self._rss.close()
            self._rss = None
