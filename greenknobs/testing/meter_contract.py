"""The contract every energy meter keeps: labelled, self-consistent windows; unique keys;
overlapping windows; an availability probe that says why not.

    from greenknobs.testing.meter_contract import check_meter
    def test_my_meter():
        check_meter(MyMeter())      # one line; ``tick`` advances fake counters between reads
"""

from __future__ import annotations

import time
from collections.abc import Callable

from greenknobs.meters.base import EnergyMeter
from greenknobs.phases import MEASURED, MODELLED, Availability, Measurement, combine_provenance

COMPONENTS = {"cpu", "gpu", "dram", "ram"}


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(1000))


def check_window(meter: EnergyMeter, tick: Callable[[], None] = lambda: None) -> Measurement:
    started = time.perf_counter()
    with meter.window("phase") as w:
        busy(0.15)
        tick()
    elapsed = time.perf_counter() - started
    m = w.measurement
    assert isinstance(m, Measurement)
    assert m.meter == meter.label
    assert m.provenance in (MEASURED, MODELLED)
    assert m.components and set(m.components) <= COMPONENTS, m.components
    assert m.provenance == combine_provenance([c["provenance"] for c in m.components.values()])
    assert abs(m.energy_j - sum(c["energy_j"] for c in m.components.values())) <= 1e-9 * max(1.0, m.energy_j)
    assert m.energy_j > 0
    assert m.meter_params and m.meter_params == meter.params()
    assert 0 < m.time_s <= elapsed + 0.5
    assert m.repeats == 1 and m.spread_j == 0.0
    return m


def check_keys(meter: EnergyMeter) -> None:
    meter.begin_window("a")
    _raises(ValueError, meter.begin_window, "a")
    meter.end_window("a")
    _raises(ValueError, meter.end_window, "a")
    _raises(ValueError, meter.end_window, "never-opened")


def check_overlap(meter: EnergyMeter, tick: Callable[[], None] = lambda: None) -> None:
    meter.begin_window("outer")
    busy(0.05)
    meter.begin_window("inner")
    busy(0.05)
    tick()
    inner = meter.end_window("inner")
    outer = meter.end_window("outer")
    assert outer.time_s >= inner.time_s
    assert outer.energy_j >= inner.energy_j * 0.99


def check_probe(meter: EnergyMeter) -> None:
    a = type(meter).probe()
    assert isinstance(a, Availability) and isinstance(a.available, bool) and a.reason
    assert isinstance(meter, EnergyMeter) and meter.resolution_s > 0


def check_meter(meter: EnergyMeter, tick: Callable[[], None] = lambda: None) -> None:
    """Every check on one meter instance (it stays usable afterwards)."""
    check_probe(meter)
    check_window(meter, tick)
    check_keys(meter)
    check_overlap(meter, tick)


def _raises(exc: type[Exception], fn, *args) -> None:
    try:
        fn(*args)
    except exc:
        return
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{args} did not raise {exc.__name__}")
