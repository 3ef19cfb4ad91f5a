"""The knob search: an Optuna multi-objective study over an experiment. The only module importing optuna.

Trial 0 is the baseline (every knob at its default), enqueued once per study. Objectives:
minimise energy (J, over the experiment's scope) and maximise/minimise the quality metric.
Constraints (``trial.set_constraint``, <= 0 is feasible) keep quality relative to the baseline
and above the trivial predictor. Everything a later step needs (per-phase energy, provenance,
knob values and their verification) is stored in the trial's user attributes, so the study in
its storage is the record: nothing lives only in this process.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from greenknobs.config import Experiment
from greenknobs.errors import ConfigError, GreenknobsError, IncompatibleKnobs, KnobError
from greenknobs.knobs.base import KnobSetting
from greenknobs.meters import create_meter
from greenknobs.phases import PhaseResult, TrialResult
from greenknobs.pipeline import run_trial
from greenknobs.runtime import detect_runtime

import warnings  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and the retry callback are marked experimental; they are what makes dead workers recoverable.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
log = logging.getLogger(__name__)

HEARTBEAT_S = 30  # a worker that stops beating for GRACE_S has died: its trial is failed and re-queued
GRACE_S = 90


class TrialFailed(Exception):
    """Raised inside the objective so Optuna records the trial as FAIL and carries on."""


class Reporter(Protocol):
    def search_started(self, exp: Experiment, finished: int, planned: int, meter: str) -> None: ...
    def trial_started(self, number: int, index: int, planned: int, values: dict[str, Any], baseline: bool) -> None: ...
    def phase_done(self, number: int, phase: str, result: PhaseResult, energy_so_far_j: float) -> None: ...
    def trial_done(self, number: int, summary: dict[str, Any], left: int, eta_s: float | None) -> None: ...


# -- storage and study -----------------------------------------------------------------------
def make_storage(url: str) -> RDBStorage:
    """Any SQLAlchemy URL; SQLite files get their folder created. Heartbeats catch dead workers."""
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
        )
    except Exception as exc:  # SQLAlchemy/driver errors: bad URL, server down, auth
        raise GreenknobsError(f"cannot open storage {mask_password(url)}: {str(exc).splitlines()[0]}") from None


def mask_password(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    head, sep, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{tail.split('@', 1)[1]}"
    return url


def _sampler(exp: Experiment) -> optuna.samplers.BaseSampler:
    if exp.sampler == "tpe":
        # Few trials: start modelling early (default 10 random starts would be most of the budget).
        return optuna.samplers.TPESampler(seed=exp.seed, multivariate=True, n_startup_trials=min(10, max(4, exp.trials // 3)))
    if exp.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=exp.seed, population_size=max(4, min(20, exp.trials // 2)))
    if exp.sampler == "random":
        return optuna.samplers.RandomSampler(seed=exp.seed)
    return optuna.samplers.GridSampler(_grid(exp), seed=exp.seed)


def _grid(exp: Experiment) -> dict[str, list[Any]]:
    grid = {}
    for s in exp.searched_knobs:
        sp = s.space
        if sp.choices is not None:
            grid[s.name] = list(sp.choices)
        elif sp.integer:
            grid[s.name] = list(range(int(sp.low), int(sp.high) + 1, int(sp.step or 1)))
        elif sp.step:
            n = int(round((sp.high - sp.low) / sp.step))
            grid[s.name] = [sp.low + i * sp.step for i in range(n + 1)]
        else:
            raise ConfigError(f"knobs.{s.name}", "the grid sampler needs choices or a step for a float range")
    return grid


def _fingerprint(exp: Experiment) -> dict[str, Any]:
    """What must not change for a study to continue: the baseline and what is measured."""
    return {
        "pipeline": exp.pipeline,
        "pipeline_options": exp.pipeline_options,
        "baseline": exp.baseline_values(),
        "objectives": [exp.objectives.energy_scope, exp.objectives.quality_metric, exp.objectives.quality_direction],
    }


def open_study(exp: Experiment, create: bool = True) -> optuna.Study:
    storage = make_storage(exp.storage)
    directions = ["minimize", exp.objectives.quality_direction]
    if not create:
        try:
            return optuna.load_study(study_name=exp.name, storage=storage, sampler=_sampler(exp))
        except KeyError:
            raise GreenknobsError(f"no study {exp.name!r} in {mask_password(exp.storage)}: run `greenknobs search` first") from None
    study = optuna.create_study(study_name=exp.name, storage=storage, directions=directions,
                                sampler=_sampler(exp), load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError("objectives", f"study {exp.name!r} already exists with directions "
                                        f"{[d.name.lower() for d in study.directions]}; use a new `name:`")
    stored = study.user_attrs.get("fingerprint")
    new = json.loads(json.dumps(_fingerprint(exp), default=str))
    if stored is None:
        study.set_user_attr("fingerprint", new)
        study.set_user_attr("experiment_source", exp.source)
    elif stored != new:
        changed = sorted(k for k in new if stored.get(k) != new[k])
        raise ConfigError(changed[0], f"study {exp.name!r} was started from a different experiment "
                                      f"(changed: {', '.join(changed)}); its baseline would no longer match. "
                                      "Give the experiment a new `name:` or use another storage")
    return study


def suggest(trial: optuna.Trial, setting: KnobSetting) -> Any:
    sp = setting.space
    if sp.choices is not None:
        return trial.suggest_categorical(setting.name, list(sp.choices))
    if sp.integer:
        return trial.suggest_int(setting.name, int(sp.low), int(sp.high), step=int(sp.step or 1), log=sp.log)
    return trial.suggest_float(setting.name, float(sp.low), float(sp.high), step=sp.step, log=sp.log)


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("baseline"):
            return t
    return None


def _ensure_baseline_queued(study: optuna.Study, exp: Experiment) -> None:
    """Enqueue the all-defaults trial unless the baseline already ran or is waiting."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)):
        if t.user_attrs.get("baseline"):
            return
    study.enqueue_trial({s.name: s.default for s in exp.searched_knobs}, user_attrs={"baseline": True},
                        skip_if_exists=False)


def _requeue_interrupted(study: optuna.Study) -> int:
    """Re-queue, with the same knob values, trials that were cut off (Ctrl-C, a killed worker).

    Failed trials with a recorded reason failed for real and are left alone; a stale RUNNING
    trial (no heartbeat for GRACE_S) is first marked failed by Optuna.
    """
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials} | {
        RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials}
    count = 0
    for t in trials:
        # The baseline is re-queued by _ensure_baseline_queued; re-queuing it here would run it twice.
        if t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs and t.number not in retried \
                and "retry_of" not in t.user_attrs and not t.user_attrs.get("baseline"):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            count += 1
    return count


def study_carbon_intensity(exp: Experiment) -> dict[str, Any]:
    """g CO2e/kWh for the experiment's grid (CodeCarbon's offline tables), with its source and PUE."""
    from greenknobs.carbon import carbon_intensity

    try:
        g_per_kwh, source = carbon_intensity(exp.carbon.country_iso_code, exp.carbon.region)
    except ValueError as exc:
        raise ConfigError("carbon.region", str(exc)) from None
    return {"g_per_kwh": g_per_kwh, "source": source, "pue": exp.carbon.pue}


def measure_idle(exp: Experiment) -> float | None:
    """Idle power (W) over ``meter.idle_baseline_s`` seconds before the study, for net energy."""
    if exp.meter.idle_baseline_s <= 0:
        return None
    from greenknobs.noise import measure_idle_power

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


def constraint_values(exp: Experiment, quality: float, trivial: float | None, retained_pct: float) -> dict[str, float]:
    """Optuna constraints, <= 0 feasible."""
    c = exp.constraints
    out = {}
    if c.min_quality_retained is not None:
        out["quality_retained"] = c.min_quality_retained - retained_pct / 100.0
    if c.beat_trivial_by is not None and trivial is not None:
        if exp.objectives.quality_direction == "maximize":
            out["beat_trivial"] = (trivial + c.beat_trivial_by) - quality
        else:
            out["beat_trivial"] = quality - (trivial - c.beat_trivial_by)
    return out


@dataclass
class SearchOutcome:
    study: optuna.Study
    ran: int
    failed: int


class Search:
    """Runs ``trials`` new trials of an experiment's study (creating it on first use)."""

    def __init__(self, exp: Experiment, tracker, reporter: Reporter | None = None):
        from pipelines import pipeline_class

        self.exp = exp
        self.tracker = tracker
        self.reporter = reporter
        self.runtime = detect_runtime(exp.device)
        self.pipeline = pipeline_class(exp.pipeline)(exp.pipeline_options)
        self.study = open_study(exp)
        self.carbon = study_carbon_intensity(exp)
        self.idle_power_w: float | None = None
        self._durations: list[float] = []
        self._current_run: str | None = None
        self.requeued = 0
        self._planned = exp.trials
        self._index = 0

    # The objective: one trial, failures recorded with their reason.
    def _objective(self, trial: optuna.Trial) -> tuple[float, float]:
        exp = self.exp
        is_baseline = bool(trial.user_attrs.get("baseline"))
        values = exp.baseline_values()
        for setting in exp.searched_knobs:
            values[setting.name] = suggest(trial, setting)
        trial.set_user_attr("knob_values", values)
        self._index += 1
        if self.reporter:
            searched = {s.name: values[s.name] for s in exp.searched_knobs}
            self.reporter.trial_started(trial.number, self._index, self._planned, searched, is_baseline)
        run_id = self.tracker.start_trial(trial.number, values, is_baseline)
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
                               idle_power_w=self.idle_power_w, carbon_intensity=self.carbon)
        except (KnobError, RuntimeError, MemoryError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            infeasible = isinstance(exc, IncompatibleKnobs)
            trial.set_user_attr("fail_reason", ("infeasible: " if infeasible else "") + str(exc))
            self.tracker.fail_trial(run_id, reason, infeasible)
            self._current_run = None
            self._record_duration(started)
            if self.reporter:
                self.reporter.trial_done(trial.number, {"failed": reason}, self._left(), self._eta())
            raise TrialFailed(reason) from exc
        finally:
            if meter is not None:
                meter.close()

        summary = self._summarise(trial, result, is_baseline)
        self.tracker.finish_trial(run_id, result, summary)
        self._current_run = None
        self._record_duration(started)
        if self.reporter:
            self.reporter.trial_done(trial.number, summary, self._left(), self._eta())
        return summary["energy_j"], summary["quality"]

    def _summarise(self, trial: optuna.Trial, result: TrialResult, is_baseline: bool) -> dict[str, Any]:
        exp = self.exp
        metric = exp.objectives.quality_metric
        energy = result.energy_for_scope(exp.objectives.energy_scope)
        quality = result.quality[metric]
        if is_baseline:
            base_energy, base_quality = energy, quality
        else:
            base = baseline_trial(self.study)
            if base is None:
                raise GreenknobsError("the baseline trial has not completed; nothing to compare against")
            base_energy, base_quality = base.values
        rel = relative_figures(exp, energy, quality, base_energy, base_quality)
        trivial_key = self.pipeline.trivial_metrics.get(metric)
        trivial = result.quality.get(trivial_key) if trivial_key else None
        constraints = constraint_values(exp, quality, trivial, rel["quality_retained_pct"])
        for name, value in constraints.items():
            trial.set_constraint(name, value)
        summary = {
            "energy_j": energy, "quality": quality, "metric": metric, "scope": exp.objectives.energy_scope,
            "provenance": result.provenance, "meter": result.meter, "time_s": result.time_s,
            "feasible": all(v <= 0 for v in constraints.values()), "constraints": constraints,
            "trivial_quality": trivial, **rel,
            "carbon_g": result.carbon_g() or {}, "net_energy_j": result.net_energy_j(),
            "meter_params": next(iter(result.meter_params.values()), {}),
        }
        trial.set_user_attr("result", json.loads(json.dumps(result.to_dict(), default=str)))
        trial.set_user_attr("summary", json.loads(json.dumps(summary, default=str)))
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
        finished = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)))
        before = len(self.study.trials)
        _ensure_baseline_queued(self.study, exp)  # first: every other trial is compared with it
        self.requeued = _requeue_interrupted(self.study)
        self.idle_power_w = measure_idle(exp)
        self.tracker.start_study(exp, self.study.study_name, carbon=self.carbon, idle_power_w=self.idle_power_w)
        if self.reporter:
            self.reporter.search_started(exp, finished, exp.trials, exp.meter.name)
        try:
            self.study.optimize(self._objective, n_trials=exp.trials, timeout=exp.timeout_s, catch=(TrialFailed,),
                                gc_after_trial=True, callbacks=[self._stop_without_baseline])
        except KeyboardInterrupt:
            if self._current_run:
                self.tracker.kill_trial(self._current_run)
            raise
        new = self.study.get_trials(deepcopy=False)[before:]
        failed = sum(t.state == TrialState.FAIL for t in new)
        return SearchOutcome(self.study, ran=len(new), failed=failed)

    def _stop_without_baseline(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get("baseline") and trial.state != TrialState.COMPLETE:
            study.stop()
            raise GreenknobsError(f"the baseline trial failed ({trial.user_attrs.get('fail_reason', 'no reason recorded')}); "
                                  "every other trial is compared with it, so the search stops here")


# -- reading results back ---------------------------------------------------------------------
def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The feasible Pareto front as Optuna computes it, ordered by energy."""
    return sorted(study.best_trials, key=lambda t: t.values[0])


def trial_row(t: FrozenTrial, exp: Experiment) -> dict[str, Any]:
    s = t.user_attrs.get("summary", {})
    result = t.user_attrs.get("result", {})
    phases = result.get("phases", {})
    meter_params = s.get("meter_params") or next(
        (p.get("meter_params") for p in phases.values() if p.get("meter_params")), {})
    return {
        "trial": t.number,
        "baseline": bool(t.user_attrs.get("baseline")),
        "state": t.state.name,
        "knobs": {k: v for k, v in t.user_attrs.get("knob_values", {}).items()},
        "searched": {k: t.params[k] for k in t.params},
        "energy_j": s.get("energy_j"),
        "scope": s.get("scope"),
        exp.objectives.quality_metric: s.get("quality"),
        "energy_saving_pct": s.get("energy_saving_pct"),
        "quality_retained_pct": s.get("quality_retained_pct"),
        "feasible": s.get("feasible"),
        "provenance": s.get("provenance"),
        "meter": s.get("meter"),
        "meter_params": meter_params,
        "phase_energy_j": {name: p.get("energy_j") for name, p in phases.items()},
        "phase_provenance": {name: p.get("provenance") for name, p in phases.items()},
        "carbon_g": s.get("carbon_g", {}).get("total"),
        "carbon_g_per_phase": s.get("carbon_g", {}),
        "carbon_source": (result.get("carbon") or {}).get("source"),
        "net_energy_j": (s.get("net_energy_j") or {}).get("total"),
        "time_s": s.get("time_s"),
        "fail_reason": t.user_attrs.get("fail_reason"),
        "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
    }


def all_rows(study: optuna.Study, exp: Experiment) -> list[dict[str, Any]]:
    return [trial_row(t, exp) for t in study.get_trials(deepcopy=False)]
