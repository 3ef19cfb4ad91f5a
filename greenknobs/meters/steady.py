"""Serving energy at steady state: joules per 1,000 predictions of a fixed request workload.

Scoring a split once (the inference phase) pays for first calls, exports and allocations; a
deployed model pays for predictions. Following ML.ENERGY's steady-state rule and the AI Energy
Score's unit (energy per 1,000 queries), this measures a model already serving: a warm-up that is
measured but excluded, then ``windows`` meter windows, each serving whole passes over the same
request batches (drawn from validation by the pipeline) until it lasts ``window_s`` -- and at least
the meter's minimum window. The figure is the median window's J per 1,000 predictions, with the
windows' min and max, the meter's provenance, and the latency of each request batch (p50, p95).
Each window notes the host's load beside it (host_load): a contended window is marked, not hidden.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from greenknobs.meters import host_load
from greenknobs.meters.base import EnergyMeter
from greenknobs.meters.noise import min_window_s
from greenknobs.phases import Measurement, combine_provenance


@dataclass(frozen=True)
class ServingConfig:
    """The experiment's ``serving:`` block."""

    measure: bool | None = None  # None: when the energy objective is inference_per_1k
    batch_size: int | None = None  # rows per request batch; None: the trial's inference.batch_size
    requests: int = 256  # validation rows in the fixed workload (served in order, passes repeated)
    warmup_s: float = 1.0  # served before the windows, measured, excluded from the figure
    window_s: float = 3.0  # each window serves whole passes until it lasts this long
    windows: int = 3  # the spread is over these

    def wanted(self, energy_scope: str) -> bool:
        return self.measure if self.measure is not None else energy_scope == "inference_per_1k"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def measure(meter: EnergyMeter, serve: Callable[[int], int], batches: int, cfg: ServingConfig,
            rows: int, batch_size: int) -> tuple[dict[str, Any], Measurement]:
    """Serve request batch ``i`` with ``serve(i)`` (returns its predictions) as described above.
    Returns the figure's record and the total this cost (warm-up and windows: the search's spend)."""
    if batches < 1:
        raise ValueError("a serving workload needs at least one request batch")
    spent: list[Measurement] = []
    with meter.window("serving.warmup") as w:
        start, served = time.perf_counter(), 0
        while served < batches or time.perf_counter() - start < cfg.warmup_s:
            serve(served % batches)
            served += 1
    spent.append(w.measurement)
    warmup = {"s": round(w.measurement.time_s, 3), "batches": served}
    floor = max(cfg.window_s, min_window_s(meter))
    per_1k, latencies, windows = [], [], []
    for k in range(cfg.windows):
        predictions, passes = 0, 0
        before = host_load.sample()
        with meter.window(f"serving.{k}") as w:
            start = time.perf_counter()
            while passes == 0 or time.perf_counter() - start < floor:
                for i in range(batches):
                    t0 = time.perf_counter()
                    predictions += serve(i)
                    latencies.append(time.perf_counter() - t0)
                passes += 1
        m = w.measurement
        load = host_load.between(before, host_load.sample())  # others' load beside it: a modelled figure moves with it
        spent.append(m)
        per_1k.append(m.energy_j * 1000.0 / max(predictions, 1))
        windows.append({"energy_j": m.energy_j, "time_s": round(m.time_s, 4), "predictions": predictions,
                        "passes": passes, "j_per_1k": per_1k[-1], "provenance": m.provenance,
                        "contended": bool(load and load["contended"]),
                        "others_cores": load["others_cores"] if load else None})
    last = spent[-1]
    total = Measurement(sum(s.energy_j for s in spent), sum(s.time_s for s in spent),
                        combine_provenance([s.provenance for s in spent]), last.meter, meter_params=last.meter_params)
    record = {
        "j_per_1k": statistics.median(per_1k), "j_per_1k_min": min(per_1k), "j_per_1k_max": max(per_1k),
        "wh_per_1k": statistics.median(per_1k) / 3600.0,
        "provenance": combine_provenance([s.provenance for s in spent[1:]]), "meter": last.meter,
        "meter_params": last.meter_params,
        "latency_ms": {"p50": 1000 * percentile(latencies, 50), "p95": 1000 * percentile(latencies, 95),
                       "per": f"request batch of {batch_size}"},
        "workload": {"split": "validation", "rows": rows, "batch_size": batch_size, "batches": batches},
        "warmup": warmup, "window_s": floor, "windows": windows, "spent_j": total.energy_j,
        "contended_windows": sum(1 for w in windows if w["contended"]),
        "config": cfg.to_dict(),
    }
    return record, total
