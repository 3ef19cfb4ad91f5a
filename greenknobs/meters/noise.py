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

Contention: every window records the load on this process's CPUs beside it (others' busy
CPU-seconds, steal, the load average: ``host_load.between``), in ``details["host_load"]`` (a list,
one entry per window; a window held ``runs_per_window[i]`` runs of ``energy_j_runs[i]`` J each, so
re-measured windows' energy is there to be counted as spent). A phase
whose window was contended is marked ``contended``. A repeatable phase is then measured again, up to
``contention_retries`` more windows, and the figure comes from the uncontended windows when any
exists (``contention: "re-measured"``; all windows stay listed); otherwise from the ``repeats``
windows asked for, marked; and for a phase that
cannot repeat (training changes the model), the figure stands, marked, with the reason
(``contention: "measured under contention: ..."``).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from greenknobs.meters import host_load
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
                   min_window: float = 0.0, on_abort: Aborted | None = None,
                   load: list[dict[str, Any]] | None = None) -> tuple[Measurement, int]:
    """One window around ``run``, repeated inside the window until it lasts ``min_window`` s.

    Returns the per-run measurement and the number of runs the window held. When ``run`` raises,
    the window still closes, and ``on_abort`` receives what was spent up to the failure (a failed
    trial's energy belongs in the search's cost) before the exception goes on. The host's load
    during the window (``host_load.between``) is appended to ``load`` when given.
    """
    runs = 0
    window = None
    before = host_load.sample() if load is not None else None
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
    if load is not None:
        seen = host_load.between(before, host_load.sample())
        if seen is not None:
            load.append(seen)
    return per_run(window.measurement, runs), runs


def measure_phase(meter: EnergyMeter, key: str, run: Callable[[], None], *, repeatable: bool,
                  repeats: int = 1, spread_warning: float = 0.10, on_abort: Aborted | None = None,
                  contention_retries: int = 2) -> tuple[Measurement, dict[str, Any]]:
    """Measure one phase under the rules above; returns the measurement and facts for its details."""
    floor = min_window_s(meter)
    load: list[dict[str, Any]] = []
    if not repeatable:
        m, _ = measure_window(meter, key, run, on_abort=on_abort, load=load)
        details: dict[str, Any] = {"min_window_s": floor}
        if m.time_s < floor:
            details["below_resolution"] = True
        _contention(details, load, [bool(load and load[0]["contended"])],
                    "not repeatable (it changes the trial's state): measured once")
        return m, details
    samples, per_window = [], []
    for _ in range(max(1, repeats)):
        m, n = measure_window(meter, key, run, floor, on_abort=on_abort, load=load)
        samples.append(m)
        per_window.append(n)
    flags = [bool(x["contended"]) for x in load] if len(load) == len(samples) else [False] * len(samples)
    retries = 0
    while any(flags) and flags.count(False) < max(1, repeats) and retries < contention_retries:
        m, n = measure_window(meter, key, run, floor, on_abort=on_abort, load=load)  # a contended window: again
        retries += 1
        samples.append(m)
        per_window.append(n)
        flags.append(bool(load[-1]["contended"]) if len(load) == len(samples) else False)
    clean = [s for s, f in zip(samples, flags) if not f]
    kept = clean or samples[:max(1, repeats)]  # none uncontended: the windows asked for, marked (the rest listed)
    m = aggregate(kept)
    details = {"min_window_s": floor, "repeats": m.repeats, "runs_per_window": per_window,
               "energy_j_runs": [s.energy_j for s in samples]}
    if any(n > 1 for n in per_window):
        details["repeated_short_window"] = True
    _contention(details, load, flags, f"still contended after {retries} more window(s)" if any(flags) else "")
    if any(flags) and clean:
        details["contention"] = (f"re-measured: {flags.count(True)} contended window(s) left out, the figure is from "
                                 f"{len(kept)} uncontended one(s)")
        details["contended"] = False
    if m.repeats > 1:
        details["spread_fraction"] = relative_spread(m)
        if relative_spread(m) > spread_warning:
            msg = (f"{key}: {m.repeats} repeats spread {relative_spread(m):.1%} of the median "
                   f"({m.spread_j:.3g} J on {m.energy_j:.3g} J), above the {spread_warning:.0%} threshold")
            details["spread_warning"] = msg
            warnings.warn(msg, NoisyMeasurementWarning, stacklevel=2)
    return m, details


def _contention(details: dict[str, Any], load: list[dict[str, Any]], flags: list[bool], why: str) -> None:
    """The host's load beside every window, and the verdict: contended or not, and what was done."""
    if not load:
        details["host_load"] = "not recorded (no /proc/stat here)"
        return
    details["host_load"] = load  # one entry per window, in the order they ran
    details["contended"] = any(flags)
    if any(flags):
        worst = max(load, key=lambda x: x["others_cores"] + x["steal_cores"])
        details["contention"] = f"measured under contention ({host_load.describe(worst)}): {why}"


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
