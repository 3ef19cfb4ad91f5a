"""Repeats, spread, short windows, idle baseline and net energy -- and their place in run_trial."""

from __future__ import annotations

import json
import time

import pytest

from greenknobs.meters.base import Availability, EnergyMeter, WindowRegistry
from greenknobs.meters.noise import (
    NoisyMeasurementWarning,
    aggregate,
    measure_idle_power,
    measure_phase,
    min_window_s,
    net_energy_j,
    per_run,
    relative_spread,
)
from greenknobs.phases import MODELLED, Measurement
from greenknobs.pipeline import Pipeline, run_trial


class ClockMeter(EnergyMeter):
    """A fake device on the real base class: a constant ``watts`` draw, optionally scripted figures."""

    name = "clock"
    provenance = MODELLED
    measures = ("cpu",)

    def __init__(self, watts: float = 10.0, resolution_s: float = 0.01, script: list[float] | None = None):
        self.watts, self.resolution_s, self.script = watts, resolution_s, list(script or [])
        self._windows = WindowRegistry(self.name)

    @classmethod
    def probe(cls) -> Availability:
        return Availability(True, "test double")

    def params(self):
        return {"watts": self.watts}

    def begin_window(self, key: str) -> None:
        self._windows.open(key, time.perf_counter())

    def end_window(self, key: str) -> Measurement:
        wall = time.perf_counter() - self._windows.close(key)
        e = self.script.pop(0) if self.script else self.watts * wall
        return Measurement(e, wall, MODELLED, self.name, {"cpu": {"energy_j": e, "provenance": MODELLED}},
                           self.params())


@pytest.fixture(autouse=True)
def quiet_host(monkeypatch):
    """Repeats and short windows here, not the neighbours: no host load is read, so no window is
    ever contended and re-measured (tests/test_contention.py covers that)."""
    from greenknobs.meters import host_load

    monkeypatch.setattr(host_load, "sample", lambda: None)


def m(e: float, t: float = 1.0) -> Measurement:
    return Measurement(e, t, MODELLED, "x", {"cpu": {"energy_j": e, "provenance": MODELLED}})


def test_aggregate_keeps_a_real_median_run_with_spread():
    agg = aggregate([m(12.0), m(10.0), m(11.0), m(30.0)])
    assert agg.energy_j == 11.0 and agg.components["cpu"]["energy_j"] == 11.0  # lower median, consistent parts
    assert agg.spread_j == 20.0 and agg.repeats == 4
    assert relative_spread(agg) == pytest.approx(20 / 11)
    with pytest.raises(ValueError):
        aggregate([])


def test_per_run_divides_energy_time_and_components():
    one = per_run(m(9.0, 3.0), 3)
    assert (one.energy_j, one.time_s, one.components["cpu"]["energy_j"]) == (3.0, 1.0, 3.0)


def test_short_repeatable_phase_runs_several_times_in_one_window():
    meter = ClockMeter(watts=10.0, resolution_s=0.01)  # min window 0.1 s
    calls = []
    measured, facts = measure_phase(meter, "inference", lambda: (calls.append(1), time.sleep(0.02)), repeatable=True)
    n = facts["runs_per_window"][0]
    assert n == len(calls) and n >= 4 and facts["repeated_short_window"]
    assert measured.time_s == pytest.approx(0.02, rel=0.5)
    assert measured.energy_j == pytest.approx(10.0 * measured.time_s, rel=1e-6)  # per run, not per window
    assert min_window_s(meter) == pytest.approx(0.1)


def test_short_other_phase_is_measured_once_and_flagged():
    calls = []
    measured, facts = measure_phase(ClockMeter(resolution_s=0.05), "data", lambda: calls.append(1), repeatable=False)
    assert calls == [1] and facts["below_resolution"] is True and measured.repeats == 1


def test_long_phase_is_not_flagged():
    _, facts = measure_phase(ClockMeter(resolution_s=0.001), "data", lambda: time.sleep(0.02), repeatable=False)
    assert "below_resolution" not in facts


def test_repeats_record_median_and_spread_and_warn_when_noisy():
    meter = ClockMeter(resolution_s=0.0, script=[1.0, 1.3, 1.05])
    with pytest.warns(NoisyMeasurementWarning, match="28.6% of the median"):
        measured, facts = measure_phase(meter, "inference", lambda: None, repeatable=True, repeats=3,
                                        spread_warning=0.10)
    assert measured.energy_j == 1.05 and measured.repeats == 3
    assert measured.spread_j == pytest.approx(0.3)
    assert facts["energy_j_runs"] == [1.0, 1.3, 1.05] and "spread_warning" in facts


def test_quiet_repeats_do_not_warn(recwarn):
    meter = ClockMeter(resolution_s=0.0, script=[1.0, 1.02, 1.01])
    _, facts = measure_phase(meter, "inference", lambda: None, repeatable=True, repeats=3, spread_warning=0.10)
    assert "spread_warning" not in facts and facts["spread_fraction"] == pytest.approx(0.02 / 1.01)
    assert not [w for w in recwarn if issubclass(w.category, NoisyMeasurementWarning)]


def test_idle_power_and_net_energy():
    idle = measure_idle_power(ClockMeter(watts=12.0), 0.1)
    assert idle["watts"] == pytest.approx(12.0) and idle["meter"] == "clock" and idle["provenance"] == MODELLED
    assert measure_idle_power(ClockMeter(), 0) is None
    assert net_energy_j(100.0, 5.0, 12.0) == pytest.approx(40.0)
    assert net_energy_j(100.0, 5.0, None) is None


class CountingPipeline(Pipeline):
    """Five trivial phases; inference 'quantises' by rebinding ctx.model, as the real knob does."""

    name = "counting"
    knobs = ()
    metrics = {"score": "maximize"}
    default_metric = "score"

    def data(self, ctx):
        ctx.apply_knobs()
        ctx.model = 0

    def model(self, ctx):
        ctx.apply_knobs()

    def system(self, ctx):
        ctx.apply_knobs()

    def training(self, ctx):
        ctx.apply_knobs()
        time.sleep(0.12)
        ctx.model = 1

    def inference(self, ctx):
        ctx.apply_knobs()
        ctx.model = ctx.model + 10  # rebinds; a repeat must start again from the trained model
        ctx.extras["runs"] = ctx.extras.get("runs", 0) + 1
        time.sleep(0.03)
        ctx.quality = {"validation": {"score": float(ctx.model)}, "test": {"score": float(ctx.model)}}
        ctx.samples["inference"] = 100


def test_run_trial_repeats_inference_from_the_same_state_and_carries_carbon_and_net(cpu_runtime):
    meter = ClockMeter(watts=10.0, resolution_s=0.01)
    carbon = {"g_per_kwh": 360.0, "source": "test table", "pue": 1.5}
    result = run_trial(CountingPipeline({}), [], meter, cpu_runtime, seed=1, repeats=3,
                       idle_power={"watts": 2.0, "meter": "clock", "provenance": MODELLED},
                       carbon_intensity=carbon)
    inf = result.phases["inference"]
    assert result.quality["validation"]["score"] == 11.0  # each run started from model=1, not from the last run's output
    assert inf.measurement.repeats == 3 and inf.details["measurement"]["repeats"] == 3
    assert sum(inf.details["measurement"]["runs_per_window"]) >= 3 * 4  # 30 ms runs in >= 100 ms windows
    assert result.phases["data"].details["measurement"]["below_resolution"] is True
    assert "below_resolution" not in result.phases["training"].details["measurement"]
    assert result.phases["training"].measurement.repeats == 1

    net = result.net_energy_j()
    assert net["training"] == pytest.approx(result.phases["training"].energy_j - 2.0 * result.phases["training"].time_s)
    grams = result.carbon_g()
    assert grams["total"] == pytest.approx(result.energy_j / 3.6e6 * 360.0 * 1.5)

    d = json.loads(json.dumps(result.to_dict()))
    assert d["carbon"]["source"] == "test table" and d["carbon"]["g"]["total"] == pytest.approx(grams["total"])
    assert d["net_energy_j"]["total"] == pytest.approx(net["total"])
    assert d["meter_params"] == {"clock": {"watts": 10.0}}
    for phase in d["phases"].values():
        assert phase["meter"] == "clock" and phase["provenance"] == MODELLED and phase["meter_params"]


def test_run_trial_defaults_are_unchanged(cpu_runtime):
    result = run_trial(CountingPipeline({}), [], ClockMeter(resolution_s=0.0), cpu_runtime, seed=1)
    assert all(p.measurement.repeats == 1 for p in result.phases.values())
    assert result.net_energy_j() is None and result.carbon_g() is None
    assert result.to_dict()["carbon"] is None
