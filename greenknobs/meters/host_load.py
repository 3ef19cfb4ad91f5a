"""Who else used the CPUs during a meter window: other processes' busy CPU-seconds and the
hypervisor's steal on the CPUs this process may run on, from /proc/stat (machine-wide counters),
minus this process tree's own CPU-seconds; and the 1-minute load average at both edges.

A modelled figure (the cpu-model) follows this process's CPU time, and that time grows when the
process must share its cores (threads wait, caches are cold); a measured figure (RAPL) is
machine-wide and includes the neighbours outright. So every window records the load beside it,
and a window is *contended* when, on average over it,

    others + steal > CONTENDED_CORES (0.5 core)   and   others + steal + own > cores - CONTENDED_CORES

-- other work used more than half a core, and this process could not simply have used idle cores
instead (on a 64-core host, a neighbour on other cores does not contend). Where /proc/stat is not
readable (not Linux), nothing is recorded and no window is marked. A window shorter than
MIN_JUDGED_S is recorded but never marked: /proc/stat counts in clock ticks (10 ms), so one stray
tick in a 20 ms window reads as half a core of neighbours.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from greenknobs.meters.cpu_model import tree_cpu_seconds

CONTENDED_CORES = 0.5
MIN_JUDGED_S = 0.5
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# /proc/stat columns: user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
_BUSY = (0, 1, 2, 5, 6)
_STEAL = 7


@dataclass(frozen=True)
class HostSample:
    t: float  # perf_counter seconds
    busy_s: float  # busy CPU-seconds of the CPUs in this process's affinity, everyone's
    steal_s: float
    own_s: float  # this process tree's CPU-seconds
    cpus: int
    loadavg_1m: float | None


def _cpu_lines(cpus: set[int]) -> tuple[float, float] | None:
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    busy = steal = 0.0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        cols = [int(x) for x in rest.split()]
        busy += sum(cols[i] for i in _BUSY if i < len(cols))
        steal += cols[_STEAL] if len(cols) > _STEAL else 0
    return busy / _TICK, steal / _TICK


def _loadavg() -> float | None:
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def sample() -> HostSample | None:
    """The counters now; None where /proc/stat cannot be read."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    counters = _cpu_lines(cpus)
    if counters is None:
        return None
    return HostSample(time.perf_counter(), counters[0], counters[1], tree_cpu_seconds(), len(cpus), _loadavg())


def between(a: HostSample | None, b: HostSample | None) -> dict[str, Any] | None:
    """What happened on this process's CPUs from ``a`` to ``b``: own, others' and stolen CPU-seconds,
    their averages in cores, the load average at both edges, and whether the window was contended."""
    if a is None or b is None:
        return None
    wall = max(b.t - a.t, 1e-9)
    own = max(b.own_s - a.own_s, 0.0)
    others = max(b.busy_s - a.busy_s - own, 0.0)  # the tick-granular counter can trail the precise own figure
    steal = max(b.steal_s - a.steal_s, 0.0)
    others_cores, steal_cores, own_cores = others / wall, steal / wall, own / wall
    return {
        "wall_s": round(wall, 4), "cpus": b.cpus, "own_cpu_s": round(own, 4), "others_cpu_s": round(others, 4),
        "steal_s": round(steal, 4), "own_cores": round(own_cores, 3), "others_cores": round(others_cores, 3),
        "steal_cores": round(steal_cores, 3), "loadavg_1m": [a.loadavg_1m, b.loadavg_1m],
        "contended": wall >= MIN_JUDGED_S and contended(others_cores, steal_cores, own_cores, b.cpus),
    }


def contended(others_cores: float, steal_cores: float, own_cores: float, cpus: int,
              threshold: float = CONTENDED_CORES) -> bool:
    """Other work used more than ``threshold`` cores and the CPUs were (nearly) full: see the module doc."""
    outside = others_cores + steal_cores
    return outside > threshold and outside + own_cores > cpus - threshold


def describe(load: dict[str, Any]) -> str:
    return (f"others {load['others_cores']:.2f} cores, steal {load['steal_cores']:.2f}, own {load['own_cores']:.2f} "
            f"of {load['cpus']} CPUs over {load['wall_s']:.1f} s")
