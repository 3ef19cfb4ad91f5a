"""The sustainability report's content, computed once and rendered as HTML, Markdown and JSON.

The search layer gathers the inputs (rows of the search and of its isolation study, Optuna's
importances, the experiment's facts); everything here is arithmetic on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from greenknobs.records import TrialRow
from greenknobs.report import analysis as A
from greenknobs.report.serving import section as serving_section
from greenknobs.units import grams_co2e, kwh


@dataclass
class ReportInputs:
    name: str
    pipeline: str
    metric: str
    maximize: bool
    energy_scope: str
    constraints: dict[str, Any]  # min_quality_retained, beat_trivial_by
    searched: list[str]  # searched knob names
    baseline_values: dict[str, Any]
    rows: list[TrialRow]  # the search study, every trial
    front: list[TrialRow]  # Optuna's feasible front
    isolation_rows: list[TrialRow]  # the isolation study (empty when it was not run)
    importance: dict[str, dict[str, float]]
    meter: dict[str, str]  # {"requested", "name", "why"}
    carbon: dict[str, Any]  # {"g_per_kwh", "source", "pue", "country_iso_code", "region"}
    reproducibility: dict[str, Any]  # versions, seed, machine, experiment file, git commit
    idle_power: dict[str, Any] | None = None
    experiment_command: str = ""
    overhead_j: dict[str, float] = field(default_factory=dict)  # warm-up runs: {"search": J, "isolation": J}
    fixed: dict[str, Any] = field(default_factory=dict)  # knobs the experiment fixed away from their defaults
    # the corpus as split: {"source", "near_duplicates" (by split pair), "dedup" (dropped, label conflicts)}
    data: dict[str, Any] = field(default_factory=dict)
    # the deployment the payback is stated for ({"retrains_per_month", "predictions_per_month"}, from the
    # experiment's ``report:``); empty: the defaults (analysis.DEFAULT_DEPLOYMENT), said so
    deployment: dict[str, Any] = field(default_factory=dict)


@dataclass
class Badge:
    label: str
    ok: bool
    detail: str


@dataclass
class Report:
    inputs: ReportInputs
    baseline: TrialRow | None
    effects: list[A.Effect]
    floor: A.NoiseFloor | None
    cascade: list[A.CascadeRow]
    pairs: list[A.PairEffect]
    progress: A.Progress | None
    recommendations: list[A.Recommendation]
    payback: A.Payback
    badges: list[Badge] = field(default_factory=list)
    predictions: int | None = None  # the inference workload: predictions per trial
    quality_floor: float | None = None
    serving: dict[str, Any] | None = None  # steady-state serving energy and its relative rating (report.serving)

    def grams(self, energy_j: float) -> float:
        c = self.inputs.carbon
        return grams_co2e(energy_j, c["g_per_kwh"], c.get("pue", 1.0))

    @property
    def recommended(self) -> TrialRow | None:
        if not self.recommendations:
            return None
        trial = self.recommendations[0].trial
        return next((r for r in self.inputs.rows if r.trial == trial), None)

    def row(self, trial: int) -> TrialRow | None:
        return next((r for r in self.inputs.rows if r.trial == trial), None)


def _quality_floor(inp: ReportInputs, baseline: TrialRow | None) -> float | None:
    """The validation quality a trial must reach to be feasible (the stricter of the constraints)."""
    if baseline is None or baseline.validation_quality is None:
        return None
    q0, bars = baseline.validation_quality, []
    keep = inp.constraints.get("min_quality_retained")
    if keep is not None:
        bars.append(q0 * keep if inp.maximize else q0 / keep)
    margin, trivial = inp.constraints.get("beat_trivial_by"), baseline.trivial_quality
    if margin is not None and trivial is not None:
        bars.append(trivial + margin if inp.maximize else trivial * (1 - margin))
    if not bars:
        return None
    return max(bars) if inp.maximize else min(bars)


def _badges(inp: ReportInputs, report: Report) -> list[Badge]:
    rows = [r for r in inp.rows if r.complete]
    provs = {r.provenance for r in rows}
    below = [r.trial for r in rows if r.phases_below_resolution]
    contended = [f"{r.trial} ({', '.join(r.contended_phases)})" for r in rows if r.contended_phases]
    badges = [
        Badge("energy measured by hardware counters", provs == {"measured"},
              f"every figure is {'/'.join(sorted(p for p in provs if p)) or 'absent'}, by {inp.meter.get('name')} "
              f"({inp.meter.get('why')})"),
        Badge("no phase window shorter than the meter resolves", not below,
              "all windows long enough" if not below else f"trials with a phase below resolution: {below[:10]}"),
        Badge("no phase measured while other processes contended for the CPUs", not contended,
              "no window was contended (others' load and steal on this process's CPUs, recorded beside every window)"
              if not contended else f"{len(contended)} trial(s) with a phase measured under contention, its figure "
              f"marked (repeatable phases were measured again): {', '.join(contended[:10])}"),
        Badge("idle baseline subtracted", inp.idle_power is not None,
              f"idle {inp.idle_power['watts']:.2f} W ({inp.idle_power['provenance']}, {inp.idle_power['meter']})"
              if inp.idle_power else "no idle baseline: figures are gross (set meter.idle_baseline_s)"),
        Badge("spread known from repeats", report.floor is not None and report.floor.energy_rel is not None,
              report.floor.describe() if report.floor else "single runs only: run `greenknobs ablate` for the noise floor"),
        Badge("carbon intensity named", True,
              f"{inp.carbon['g_per_kwh']:.0f} g CO2e/kWh, {inp.carbon['source']}, PUE {inp.carbon.get('pue', 1.0)}"),
    ]
    return badges


def build(inp: ReportInputs, validation_size: int | None = None, predictions: int | None = None) -> Report:
    baseline = next((r for r in inp.rows if r.baseline and r.complete), None)
    effects, floor = A.knob_effects(inp.isolation_rows, inp.maximize, validation_size)
    casc = A.cascade(inp.rows, inp.isolation_rows, effects, floor, inp.baseline_values, inp.maximize)
    qfloor = _quality_floor(inp, baseline)
    recs = A.recommendations(inp.front, baseline, floor, inp.searched, inp.maximize, predictions, inp.fixed)
    report = Report(
        inputs=inp, baseline=baseline, effects=effects, floor=floor, cascade=casc,
        pairs=A.interfering_pairs(casc, floor),
        progress=A.progress(inp.rows, inp.maximize, qfloor) if qfloor is not None else None,
        recommendations=recs, payback=A.payback(inp.rows, inp.isolation_rows, recs, baseline, predictions,
                                                inp.overhead_j.get("search", 0.0), inp.overhead_j.get("isolation", 0.0),
                                                floor, inp.deployment),
        predictions=predictions, quality_floor=qfloor)
    report.badges = _badges(inp, report)
    report.serving = serving_section(inp.rows, baseline, inp.front, report.recommended)
    return report


def summary_numbers(report: Report) -> dict[str, Any]:
    """Baseline vs recommended: J, kWh, g CO2e, time, quality, provenance, J per 1,000 predictions."""
    out: dict[str, Any] = {}
    for label, row in (("baseline", report.baseline), ("recommended", report.recommended)):
        if row is None:
            continue
        out[label] = {
            "trial": row.trial, "energy_j": row.energy_j, "kwh": kwh(row.energy_j or 0.0),
            "g_co2e": report.grams(row.energy_j or 0.0), "time_s": row.time_s,
            "validation_quality": row.validation_quality, "test_quality": row.test_quality,
            "provenance": row.provenance, "meter": row.meter,
            "j_per_1k_predictions": A.inference_per_1k(row, report.predictions),
        }
    return out
