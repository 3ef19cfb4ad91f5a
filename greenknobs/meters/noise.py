"""Noise and short windows: repeats, median and spread, resolution checks, idle baseline.

A window shorter than ``MIN_WINDOW_FACTOR`` x the meter's resolution is dominated by the
meter's update step (a tick, a counter refresh), so:
  * a *repeatable* phase (inference: it re-evaluates the same trained model) is run n times
    inside one window until the window is long enough; the figure is divided by n;
  * any other phase is measured once and flagged ``below_resolution``.
``repeats: k`` measures a repeatable phase k times (k windows) and keeps the lower median run
(an actual run, so its components still add up), the spread (max - min) and k; a spread above
``spread_warning`` x median raises a NoisyMeasurementWarning and is noted in the phase details.
Re-running training k times would multiply the study's cost by k; it is measured once.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from greenknobs.meters.base import EnergyMeter
from greenknobs.phases import Measurement

MIN_WINDOW_FACTOR = 10.0  # a resolution step is then at most ~10 % of the window


class NoisyMeasurementWarning(UserWarning):
    """Repeated measurements of one phase disagree by more than the configured fraction."""


def min_window_s(meter: EnergyMeter) -> float:
    return MIN_WINDOW_FACTOR * meter.resolution_s


def per_run(m: Measurement, runs: int) -> Measurement:
    """A window that held ``runs`` identical runs, expressed per run."""
    if runs == 1:
        return m
    comps = {k: {**v, "energy_j": v["energy_j"] / runs} for k, v in m.components.items()}
    return replace(m, energy_j=m.energy_j / runs, time_s=m.time_s / runs, components=comps)


def aggregate(runs: list[Measurement]) -> Measurement:
    """The lower-median run, with spread (max - min energy) and the number of runs recorded."""
    if not runs:
        raise ValueError("aggregate() needs at least one measurement")
    energies = [m.energy_j for m in runs]
    median = statistics.median_low(energies)
    chosen = runs[energies.index(median)]
    return replace(chosen, spread_j=max(energies) - min(energies), repeats=len(runs))


def relative_spread(m: Measurement) -> float:
    """Spread as a fraction of the figure (0 for a single run or a zero figure)."""
    return m.spread_j / m.energy_j if m.energy_j > 0 else 0.0


Aborted = Callable[[Measurement], None]


def measure_window(meter: EnergyMeter, key: str, run: Callable[[], None],
                   min_window: float = 0.0, on_abort: Aborted | None = None) -> tuple[Measurement, int]:
    """One window around ``run``, repeated inside the window until it lasts ``min_window`` s.

    Returns the per-run measurement and the number of runs the window held. When ``run`` raises,
    the window still closes, and ``on_abort`` receives what was spent up to the failure (a failed
    trial's energy belongs in the search's cost) before the exception goes on.
    """
    runs = 0
    window = None
    try:
        with meter.window(key) as window:
            start = time.perf_counter()
            while True:
                run()
                runs += 1
                if time.perf_counter() - start >= min_window:
                    break
    except BaseException:
        if on_abort is not None and window is not None and window._measurement is not None:
            on_abort(window._measurement)
        raise
    return per_run(window.measurement, runs), runs


def measure_phase(meter: EnergyMeter, key: str, run: Callable[[], None], *, repeatable: bool,
                  repeats: int = 1, spread_warning: float = 0.10,
                  on_abort: Aborted | None = None) -> tuple[Measurement, dict[str, Any]]:
    """Measure one phase under the rules above; returns the measurement and facts for its details."""
    floor = min_window_s(meter)
    if not repeatable:
        m, _ = measure_window(meter, key, run, on_abort=on_abort)
        details: dict[str, Any] = {"min_window_s": floor}
        if m.time_s < floor:
            details["below_resolution"] = True
        return m, details
    samples, per_window = [], []
    for _ in range(max(1, repeats)):
        m, n = measure_window(meter, key, run, floor, on_abort=on_abort)
        samples.append(m)
        per_window.append(n)
    m = aggregate(samples)
    details = {"min_window_s": floor, "repeats": m.repeats, "runs_per_window": per_window,
               "energy_j_runs": [s.energy_j for s in samples]}
    if any(n > 1 for n in per_window):
        details["repeated_short_window"] = True
    if m.repeats > 1:
        details["spread_fraction"] = relative_spread(m)
        if relative_spread(m) > spread_warning:
            msg = (f"{key}: {m.repeats} repeats spread {relative_spread(m):.1%} of the median "
                   f"({m.spread_j:.3g} J on {m.energy_j:.3g} J), above the {spread_warning:.0%} threshold")
            details["spread_warning"] = msg
            warnings.warn(msg, NoisyMeasurementWarning, stacklevel=2)
    return m, details


def measure_idle_power(meter: EnergyMeter, seconds: float) -> dict[str, Any] | None:
    """Average power the meter reports while this process sleeps, with the meter and provenance
    behind it: {"watts", "seconds", "meter", "provenance", "meter_params"}; None if ``seconds`` <= 0.

    Measured once before a study; subtract it with ``net_energy_j``. With cpu-model and
    ``base_watts: 0`` this is ~0 W by construction (the model attributes no idle power).
    """
    if seconds <= 0:
        return None
    with meter.window("idle-baseline") as w:
        time.sleep(seconds)
    m = w.measurement
    if m.time_s <= 0:
        return None
    return {"watts": m.energy_j / m.time_s, "seconds": m.time_s, "meter": m.meter, "provenance": m.provenance,
            "meter_params": m.meter_params}


def net_energy_j(gross_j: float, time_s: float, idle_w: float | None) -> float | None:
    """Gross minus what the idle machine would have used over the same time (may be < 0 in noise)."""
    return None if idle_w is None else gross_j - idle_w * time_s
