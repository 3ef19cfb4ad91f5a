"""The knob search: runs an experiment's trials in its Optuna study.

Constraints (``trial.set_constraint``, <= 0 is feasible) keep quality relative to the baseline
and above the trivial predictor. A failing trial is recorded (Optuna FAIL, MLflow FAILED, the
reason) and the search goes on.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from typing import Any, Protocol

from greenknobs.config import Experiment
from greenknobs.errors import ConfigError, GreenknobsError, IncompatibleKnobs
from greenknobs.knobs.compat import canonicalise
from greenknobs.meters import create_meter, resolve
from greenknobs.meters.carbon import carbon_intensity
from greenknobs.meters.noise import measure_idle_power
from greenknobs.phases import TEST, VALIDATION, PhaseResult, TrialResult
from greenknobs.pipeline import pipeline_class, run_trial
from greenknobs.records import TrialSummary
from greenknobs.runtime import detect_runtime
from greenknobs.search import study as studies
from greenknobs.search.study import FrozenTrial, Study, Trial, TrialState

SAME_ERROR_LIMIT = 3  # the same unexpected error this many trials in a row stops the search


class TrialFailed(Exception):
    """Raised inside the objective so Optuna records the trial as FAIL and carries on."""


class Reporter(Protocol):
    def search_started(self, exp: Experiment, finished: int, planned: int, meter: dict[str, str]) -> None: ...
    def trial_started(self, number: int, index: int, planned: int, values: dict[str, Any], baseline: bool) -> None: ...
    def phase_done(self, number: int, phase: str, result: PhaseResult, energy_so_far_j: float) -> None: ...
    def trial_done(self, number: int, summary: TrialSummary | None, failure: str | None, left: int,
                   eta_s: float | None) -> None: ...
    def note(self, number: int, message: str) -> None: ...


def study_carbon_intensity(exp: Experiment) -> dict[str, Any]:
    """g CO2e/kWh for the experiment's grid (CodeCarbon's offline tables), with its source and PUE."""
    try:
        g_per_kwh, source = carbon_intensity(exp.carbon.country_iso_code, exp.carbon.region)
    except ValueError as exc:
        raise ConfigError("carbon.region", str(exc)) from None
    return {"g_per_kwh": g_per_kwh, "source": source, "pue": exp.carbon.pue}


def measure_idle(exp: Experiment) -> dict[str, Any] | None:
    """Idle power over ``meter.idle_baseline_s`` seconds before the study (for net energy), with
    the meter and provenance behind it."""
    if exp.meter.idle_baseline_s <= 0:
        return None
    meter = create_meter(exp.meter.name, exp.meter.params)
    try:
        return measure_idle_power(meter, exp.meter.idle_baseline_s)
    finally:
        meter.close()


# -- per-trial figures ---------------------------------------------------------------------
def relative_figures(exp: Experiment, energy_j: float, quality: float, base_energy_j: float,
                     base_quality: float) -> dict[str, float]:
    saving = 100.0 * (1.0 - energy_j / base_energy_j) if base_energy_j > 0 else 0.0
    if exp.objectives.quality_direction == "maximize":
        retained = quality / base_quality if base_quality else 0.0
    else:
        retained = base_quality / quality if quality else 0.0
    return {"energy_saving_pct": saving, "quality_retained_pct": 100.0 * retained}


def trivial_bar(exp: Experiment, trivial: float) -> float:
    """The quality a trial must reach to count as better than trivial.

    maximise (F1, accuracy): trivial + margin, the margin in the metric's own units;
    minimise (perplexity): trivial x (1 - margin), the margin a fraction -- an absolute margin
    means nothing across perplexities that differ by orders of magnitude.
    """
    margin = exp.constraints.beat_trivial_by or 0.0
    if exp.objectives.quality_direction == "maximize":
        return trivial + margin
    return trivial * (1.0 - margin)


def constraint_values(exp: Experiment, quality: float, trivial: float | None, retained_pct: float) -> dict[str, float]:
    """Optuna constraints on validation figures, <= 0 feasible."""
    c = exp.constraints
    out = {}
    if c.min_quality_retained is not None:
        out["quality_retained"] = c.min_quality_retained - retained_pct / 100.0
    if c.beat_trivial_by is not None and trivial is not None:
        bar = trivial_bar(exp, trivial)
        out["beat_trivial"] = bar - quality if exp.objectives.quality_direction == "maximize" else quality - bar
    return out


@dataclass
class SearchOutcome:
    study: Study
    ran: int
    failed: int


class Search:
    """Runs ``trials`` new trials of an experiment's study (creating it on first use)."""

    def __init__(self, exp: Experiment, tracker, reporter: Reporter | None = None):
        self.exp = exp
        self.tracker = tracker
        self.reporter = reporter
        self.runtime = detect_runtime(exp.device)
        self.pipeline = pipeline_class(exp.pipeline)(exp.pipeline_options)
        self.study = studies.open_study(exp)
        self.meter_choice = resolve(exp.meter.name)  # the meter actually used, never just "auto"
        self.carbon = study_carbon_intensity(exp)
        self.idle_power: dict[str, Any] | None = None
        self._durations: list[float] = []
        self._current_run: str | None = None
        self.requeued = 0
        self._planned = exp.trials
        self._index = 0
        self._streak: tuple[tuple[str, str], int] | None = None  # (error signature, consecutive count)
        self._abort: str | None = None

    # The objective: one trial, failures recorded with their reason.
    def _objective(self, trial: Trial) -> tuple[float, float]:
        exp = self.exp
        is_baseline = bool(trial.user_attrs.get("baseline"))
        sampled = exp.baseline_values()
        for setting in exp.searched_knobs:
            sampled[setting.name] = studies.suggest(trial, setting)
        # settings that do nothing in this combination go back to the baseline: no energy on duplicates
        values, notes = canonicalise(sampled, exp.baseline_values())
        trial.set_user_attr("knob_values", values)
        if notes:
            trial.set_user_attr("canonicalised", notes)
        self._index += 1
        if self.reporter:
            searched = {s.name: values[s.name] for s in exp.searched_knobs}
            self.reporter.trial_started(trial.number, self._index, self._planned, searched, is_baseline)
            for note in notes:
                self.reporter.note(trial.number, f"canonical: {note}")
        twin = None if is_baseline else studies.completed_twin(self.study, values, trial.number)
        if twin is not None:
            return self._reuse(trial, twin)
        run_id = self.tracker.start_trial(trial.number, values, is_baseline, notes)
        self._current_run = run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        started = time.perf_counter()
        spent = [0.0]

        def on_phase(phase: str, result: PhaseResult) -> None:
            spent[0] += result.energy_j
            if self.reporter:
                self.reporter.phase_done(trial.number, phase, result, spent[0])

        knobs = [(s.knob, values[s.name]) for s in exp.knobs]
        meter = None
        try:
            meter = create_meter(exp.meter.name, exp.meter.params)
            result = run_trial(self.pipeline, knobs, meter, self.runtime, exp.seed, progress=on_phase,
                               repeats=exp.repeats, spread_warning=exp.meter.spread_warning,
                               idle_power=self.idle_power, carbon_intensity=self.carbon)
            summary = self._summarise(trial, result, is_baseline)
            self.tracker.finish_trial(run_id, result, summary)
        except Exception as exc:  # every failure is recorded; the search goes on
            raise self._failed(trial, run_id, exc, started) from exc
        finally:
            if meter is not None:
                meter.close()
        self._streak = None
        self._current_run = None
        self._record_duration(started)
        if self.reporter:
            self.reporter.trial_done(trial.number, summary, None, self._left(), self._eta())
        return summary.energy_j, summary.quality

    def _failed(self, trial: Trial, run_id: str, exc: BaseException, started: float) -> TrialFailed:
        """Record a failure everywhere (Optuna, MLflow with the traceback, the console) and decide
        whether the search can go on: the same unexpected error several trials in a row is a bug."""
        infeasible = isinstance(exc, IncompatibleKnobs)
        reason = f"{type(exc).__name__}: {exc}"
        trial.set_user_attr("fail_reason", ("infeasible: " if infeasible else "") + str(exc))
        trial.set_user_attr("fail_type", type(exc).__name__)
        self.tracker.fail_trial(run_id, reason, infeasible, traceback.format_exc())
        self._current_run = None
        self._record_duration(started)
        if self.reporter:
            self.reporter.trial_done(trial.number, None, reason, self._left(), self._eta())
        if not infeasible:
            signature = (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            count = self._streak[1] + 1 if self._streak and self._streak[0] == signature else 1
            self._streak = (signature, count)
            if count >= SAME_ERROR_LIMIT:
                self._abort = (f"the same error ended {count} trials in a row ({reason}); that is a bug, not a bad "
                               f"knob value -- the search stops here. The traceback is in the MLflow run of trial "
                               f"{trial.number} (artifact traceback.txt)")
                self.study.stop()
        return TrialFailed(reason)

    def _reuse(self, trial: Trial, twin: FrozenTrial) -> tuple[float, float]:
        """An exact duplicate of a completed trial (after canonicalisation): its result, marked so."""
        for key in ("result", "summary"):
            trial.set_user_attr(key, twin.user_attrs[key])
        trial.set_user_attr("duplicate_of", twin.number)
        for name, value in twin.user_attrs["summary"].get("constraints", {}).items():
            trial.set_constraint(name, value)
        run_id = self.tracker.reuse_trial(trial.number, twin.user_attrs.get("mlflow_run_id"), twin.number)
        trial.set_user_attr("mlflow_run_id", run_id)
        if self.reporter:
            self.reporter.note(trial.number, f"same knob values as trial {twin.number} (after canonicalisation): "
                                             "its result is reused, nothing runs")
            self.reporter.trial_done(trial.number, TrialSummary.from_dict(twin.user_attrs["summary"]), None,
                                     self._left(), self._eta())
        return twin.values[0], twin.values[1]

    def _summarise(self, trial: Trial, result: TrialResult, is_baseline: bool) -> TrialSummary:
        exp = self.exp
        metric = exp.objectives.quality_metric
        energy = result.energy_for_scope(exp.objectives.energy_scope)
        validation, test = result.quality[VALIDATION], result.quality[TEST]
        quality, test_quality = validation[metric], test[metric]
        if is_baseline:
            base_energy, base_quality, base_test = energy, quality, test_quality
        else:
            base = studies.baseline_trial(self.study)
            if base is None:
                raise GreenknobsError("the baseline trial has not completed; nothing to compare against")
            base_energy, base_quality = base.values
            base_test = base.user_attrs["summary"]["test_quality"]
        rel = relative_figures(exp, energy, quality, base_energy, base_quality)
        test_rel = relative_figures(exp, energy, test_quality, base_energy, base_test)
        trivial_key = self.pipeline.trivial_metrics.get(metric)
        trivial = validation.get(trivial_key) if trivial_key else None  # the guard reads validation only
        constraints = constraint_values(exp, quality, trivial, rel["quality_retained_pct"])
        for name, value in constraints.items():
            trial.set_constraint(name, value)
        summary = TrialSummary(
            energy_j=energy, scope=exp.objectives.energy_scope, metric=metric, quality=quality,
            provenance=result.provenance, meter=result.meter,
            meter_params=next(iter(result.meter_params.values()), {}), time_s=result.time_s,
            energy_saving_pct=rel["energy_saving_pct"], quality_retained_pct=rel["quality_retained_pct"],
            feasible=all(v <= 0 for v in constraints.values()), constraints=constraints, trivial_quality=trivial,
            test_quality=test_quality, test_quality_retained_pct=test_rel["quality_retained_pct"],
            carbon_g=result.carbon_g() or {}, net_energy_j=result.net_energy_j())
        trial.set_user_attr("result", json.loads(json.dumps(result.to_dict(), default=str)))
        trial.set_user_attr("summary", json.loads(json.dumps(summary.to_dict(), default=str)))
        return summary

    def _record_duration(self, started: float) -> None:
        self._durations.append(time.perf_counter() - started)

    def _left(self) -> int:
        return max(0, self._planned - self._index)

    def _eta(self) -> float | None:
        if not self._durations:
            return None
        # The baseline is usually the most expensive trial: estimate from the others once there are some.
        pool = self._durations[1:] or self._durations
        return sum(pool) / len(pool) * self._left()

    def run(self) -> SearchOutcome:
        exp = self.exp
        finished = studies.finished_count(self.study)
        before = len(self.study.trials)
        studies.ensure_baseline_queued(self.study, exp)  # first: every other trial is compared with it
        self.requeued = studies.requeue_interrupted(self.study)
        self.idle_power = measure_idle(exp)
        self.tracker.start_study(exp, self.study.study_name, carbon=self.carbon, idle_power=self.idle_power,
                                 meter=self.meter_choice)
        if self.reporter:
            self.reporter.search_started(exp, finished, exp.trials, self.meter_choice)
        try:
            self.study.optimize(self._objective, n_trials=exp.trials, timeout=exp.timeout_s, catch=(TrialFailed,),
                                gc_after_trial=True, callbacks=[self._stop_without_baseline])
        except KeyboardInterrupt:
            if self._current_run:
                self.tracker.kill_trial(self._current_run)
            raise
        if self._abort:
            raise GreenknobsError(self._abort)
        new = self.study.get_trials(deepcopy=False)[before:]
        failed = sum(t.state == TrialState.FAIL for t in new)
        return SearchOutcome(self.study, ran=len(new), failed=failed)

    def _stop_without_baseline(self, study: Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get("baseline") and trial.state != TrialState.COMPLETE:
            study.stop()
            raise GreenknobsError(f"the baseline trial failed ({trial.user_attrs.get('fail_reason', 'no reason recorded')}); "
                                  "every other trial is compared with it, so the search stops here")
