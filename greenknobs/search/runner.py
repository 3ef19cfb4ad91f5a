"""The knob search: runs an experiment's trials in its Optuna study.

Constraints (``trial.set_constraint``, <= 0 is feasible) keep quality relative to the baseline
and above the trivial predictor. A failing trial is recorded (Optuna FAIL, MLflow FAILED, the
reason) and the search goes on.
"""

from __future__ import annotations

import gc
import itertools
import json
import random
import time
import traceback
from dataclasses import dataclass
from typing import Any, Protocol

from greenknobs.config import Experiment, check_inputs
from greenknobs.devices.gpu import bind as bind_gpu
from greenknobs.devices.gpu import foreign_processes as gpu_foreign_processes
from greenknobs.errors import ConfigError, GreenknobsError, HopelessTrial, IncompatibleKnobs
from greenknobs.knobs.compat import canonicalise
from greenknobs.meters import create_meter, resolve
from greenknobs.meters.carbon import carbon_intensity
from greenknobs.meters.noise import measure_idle_power
from greenknobs.phase_store import PhaseStore
from greenknobs.phases import TEST, VALIDATION, PhaseResult, TrialResult, combine_provenance
from greenknobs.pipeline import pipeline_class, run_trial
from greenknobs.records import TrialSummary
from greenknobs.runtime import detect_runtime
from greenknobs.search import study as studies
from greenknobs.search.coordination import (
    Heartbeat,
    HostWorkers,
    Periodic,
    SqliteClaim,
    StudyLock,
    check_reachable,
    is_gone,
    wait,
    worker_identity,
)
from greenknobs.search.study import FrozenTrial, Study, Trial
from greenknobs.urls import normalise_db_url

SAME_ERROR_LIMIT = 3  # the same unexpected error this many trials in a row stops the search
_WARMED: set[tuple[str, str]] = set()  # pipelines this process has warmed up
_FROZEN = False


def _freeze_long_lived() -> None:
    """Move what exists now (imported libraries, loaded tokenizers, clients) out of the cycle
    collector's reach, once per process: the full collection after every trial then scans only
    what trials created -- 0.27 s per trial less CPU here (with 8 workers on 2 cores, that time is
    the scaling limit). Frozen objects are still freed by reference counting."""
    global _FROZEN
    if not _FROZEN:
        gc.collect()
        gc.freeze()
        _FROZEN = True


class TrialStopped(Exception):
    """Raised inside the objective when a trial is stopped on purpose (hopeless): Optuna PRUNED."""


class TrialFailed(Exception):
    """Raised inside the objective so Optuna records the trial as FAIL and carries on."""


class Reporter(Protocol):
    def search_started(self, exp: Experiment, finished: int, planned: int, meter: dict[str, str]) -> None: ...
    def trial_started(self, number: int, index: int, planned: int, values: dict[str, Any], baseline: bool) -> None: ...
    def phase_done(self, number: int, phase: str, result: PhaseResult, energy_so_far_j: float) -> None: ...
    def trial_done(self, number: int, summary: TrialSummary | None, failure: str | None, left: int,
                   eta_s: float | None, stopped: bool = False) -> None: ...  # stopped: on purpose, not failed
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


# a trial stopped for being below the floor must be short of it by more than REACH_SAFETY x the
# largest gain (check -> end of training) seen in at least REACH_MIN_TRIALS completed trials
REACH_SAFETY = 1.5
REACH_MIN_TRIALS = 3


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


def constraint_names(exp: Experiment) -> list[str]:
    """The Optuna constraints this experiment sets on every trial."""
    return list(constraint_values(exp, quality=0.0, trivial=0.0, retained_pct=0.0))


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
    stopped_by: str = "trial budget"  # what ended it: the trial budget, the energy budget, the timeout, the plan
    spent_j: float = 0.0  # everything the study has spent so far (trials, failures, stopped trials, warm-ups)


class Search:
    """Runs an experiment's study (creating it on first use) until its total trial budget, its
    energy budget or its timeout is spent.

    ``isolation=True`` runs an isolation study instead (search/ablation.py): the trials are the
    queued plan, and repeats are the point, so nothing is reused (neither an identical earlier
    trial nor stored phase outputs) and no trial is stopped early.
    """

    def __init__(self, exp: Experiment, tracker, reporter: Reporter | None = None, *, isolation: bool = False,
                 heartbeat_s: float = studies.HEARTBEAT_S, grace_s: float = studies.GRACE_S, gpu: str | None = None):
        self.exp = exp
        self.isolation = isolation
        self.tracker = tracker
        self.reporter = reporter
        self.heartbeat_s, self.grace_s = heartbeat_s, grace_s
        # one worker, one GPU: bound (by UUID, exclusively) before anything initialises CUDA
        self.gpu = bind_gpu(gpu) if gpu else None
        self.runtime = detect_runtime(exp.device)
        self.pipeline = pipeline_class(exp.pipeline)(exp.pipeline_options)
        self.meter_choice = resolve(exp.meter.name)  # the meter actually used, never just "auto"
        self.carbon = study_carbon_intensity(exp)
        self.study: Study | None = None  # opened under the study lock in run(): workers may start together
        self.worker = {**worker_identity(), **({"gpu": self.gpu} if self.gpu else {})}
        self.host_workers: HostWorkers | None = None
        self.idle_power: dict[str, Any] | None = None
        self._durations: list[float] = []
        self._current_run: str | None = None
        self.requeued = 0
        self._planned = exp.trials
        self._index = 0
        self._streak: tuple[tuple[str, str], int] | None = None  # (error signature, consecutive count)
        self._abort: str | None = None
        self._stopped_by = "queued plan" if isolation else "trial budget"
        # phase-output reuse: not in an isolation study, whose repeats must each really run
        self.store = (PhaseStore(exp.results_dir / "reuse", max_bytes=int(exp.reuse.max_gb * 1e9))
                      if exp.reuse.enabled and not isolation else None)

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
        assert self.study is not None
        twin = None if is_baseline or self.isolation else self._twin(trial, values)
        if twin is not None:
            return self._reuse(trial, twin)
        changed = {k: v for k, v in values.items() if v != exp.baseline_values().get(k)}
        run_id = self.tracker.start_trial(trial.number, values, is_baseline, notes, changed)
        self._current_run = run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        started = time.perf_counter()
        spent: dict[str, Any] = {"j": 0.0, "phases": {}, "provenance": []}

        def on_phase(phase: str, result: PhaseResult) -> None:
            # saved as the trial goes: a trial that fails (or a worker that dies) still counts in the search's
            # cost; a reused phase costs only what loading it did (its attributed energy is the stored cost)
            used = float(result.details.get("spent_j", result.energy_j))
            spent["j"] += used
            spent["phases"][phase] = spent["phases"].get(phase, 0.0) + used
            spent["provenance"].append(result.measurement.provenance)
            trial.set_user_attr("spent", {"energy_j": spent["j"], "phases": spent["phases"],
                                          "provenance": combine_provenance(spent["provenance"])})
            if self.reporter:
                self.reporter.phase_done(trial.number, phase, result, spent["j"])

        knobs = [(s.knob, values[s.name]) for s in exp.knobs]
        meter = None
        try:
            self._gpu_alone("before")
            meter = create_meter(exp.meter.name, exp.meter.params)
            result = run_trial(self.pipeline, knobs, meter, self.runtime, exp.seed, progress=on_phase,
                               repeats=exp.repeats, spread_warning=exp.meter.spread_warning,
                               idle_power=self.idle_power, carbon_intensity=self.carbon, store=self.store,
                               progress_check=None if is_baseline or self.isolation else self._hopeless_check(trial),
                               trial_number=trial.number)
            self._gpu_alone("after")
            extra = (result.reuse.get("load_j") or 0.0) * (result.reuse.get("status") != "reused") + \
                (result.reuse.get("publish_j") or 0.0)  # the store's own reads and writes, outside the phases
            if extra:
                spent["j"] += extra
                trial.set_user_attr("spent", {**trial.user_attrs.get("spent", {}), "energy_j": spent["j"],
                                              "store_j": extra})
            summary = self._summarise(trial, result, is_baseline)
            self.tracker.finish_trial(run_id, result, summary)
        except HopelessTrial as exc:  # stopped on purpose: PRUNED, its energy counted, the reason kept
            raise self._stopped(trial, run_id, exc, started) from exc
        except Exception as exc:  # every failure is recorded; the search goes on
            raise self._failed(trial, run_id, exc, started) from exc
        finally:
            if meter is not None:
                meter.close()
        self._streak = None
        self._current_run = None
        self._record_duration(started)
        if self.reporter:
            if result.reuse.get("status") == "reused":
                self.reporter.note(trial.number, f"{', '.join(result.reuse['phases'])} reused from trial "
                                                 f"{result.reuse.get('from_trial', '?')} (loaded for "
                                                 f"{result.reuse.get('load_j', 0.0):.1f} J; the objective counts what "
                                                 "they cost when they ran)")
            self.reporter.trial_done(trial.number, summary, None, self._left(), self._eta())
        if (result.reuse.get("published") or {}).get("training") is True and summary.feasible and not self.isolation:
            self._queue_variants(trial, values)
        return summary.energy_j, summary.quality

    def _twin(self, trial: Trial, values: dict[str, Any]) -> FrozenTrial | None:
        """A completed trial with these knob values; if another worker is running them right now,
        wait for its result rather than spend the energy twice."""
        assert self.study is not None
        announced = False
        while (running := studies.running_twin(self.study, values, trial.number)) is not None:
            if self.reporter and not announced:
                self.reporter.note(trial.number, f"same knob values as trial {running.number}, running in another "
                                                 "worker: waiting for its result")
                announced = True
            wait(1.0)
        return studies.completed_twin(self.study, values, trial.number)

    def _hopeless_check(self, trial: Trial):
        """A progress check for the training loop: once, at ``stop_hopeless.at_fraction`` of the
        planned steps, score validation; at the trivial model's level, or too far below the floor
        to reach it, stop (HopelessTrial)."""
        exp = self.exp
        if not exp.stop_hopeless.enabled or self.study is None:
            return None
        base = studies.baseline_trial(self.study)
        trivial = (base.user_attrs.get("summary") or {}).get("trivial_quality") if base else None
        if trivial is None:
            return None
        maximize = exp.objectives.quality_direction == "maximize"
        bar = trivial_bar(exp, trivial)
        # only where the floors lie above the trivial level is "still trivial halfway" a verdict: with
        # no trivial guard and a baseline near the trivial level (a tiny model), a slow start may still pass
        retained = exp.constraints.min_quality_retained
        base_quality = base.values[1] if base is not None and base.values else None
        floor = None if retained is None or base_quality is None else (
            base_quality * retained if maximize else base_quality / retained)
        if exp.constraints.beat_trivial_by is None and (floor is None or (floor <= bar if maximize else floor >= bar)):
            return None
        # how far below the floor a trial may be at the check and still reach it: the largest gain
        # completed trials made over the rest of their training, with room to spare; learned only
        # once a few trials have finished (the first ones always run to the end)
        gains = studies.gains_after_check(self.study) if exp.stop_hopeless.below_floor and floor is not None else []
        reach = max(max(gains), 0.0) * REACH_SAFETY if len(gains) >= REACH_MIN_TRIALS else None
        state = {"done": False}

        def check(fraction: float, validate) -> None:
            if state["done"] or fraction < exp.stop_hopeless.at_fraction:
                return
            state["done"] = True
            score = validate()  # the task's validation score, higher is better (perplexity comes negated)
            quality = score if maximize else -score
            trivial_level = quality <= bar if maximize else quality >= bar
            short = reach is not None and floor is not None and (
                quality + reach < floor if maximize else quality - reach > floor)
            trial.set_user_attr("progress_check", {
                "fraction": round(fraction, 3), "validation_quality": quality, "trivial_bar": bar,
                "direction": exp.objectives.quality_direction, "floor": floor, "reach": reach,
                "reach_from_trials": len(gains), "hopeless": trivial_level or short})
            metric = exp.objectives.quality_metric
            if trivial_level:
                raise HopelessTrial(f"after {fraction:.0%} of training, validation {metric} {quality:.4f} is still at "
                                    f"the trivial model's level ({bar:.4f}): it cannot meet the quality floor, so "
                                    "the trial stops here")
            if short and reach is not None:
                raise HopelessTrial(f"after {fraction:.0%} of training, validation {metric} {quality:.4f} is too far "
                                    f"from the floor ({floor:.4f}) to reach it: the {len(gains)} completed trials "
                                    f"gained at most {reach / REACH_SAFETY:.4f} over the rest of training (allowed "
                                    f"{reach:.4f}), so the trial stops here")
        return check

    def _stopped(self, trial: Trial, run_id: str, exc: HopelessTrial, started: float) -> TrialStopped:
        trial.set_user_attr("stop_reason", str(exc))
        self.tracker.stop_trial(run_id, str(exc))
        self._current_run = None
        self._record_duration(started)
        if self.reporter:
            self.reporter.trial_done(trial.number, None, str(exc), self._left(), self._eta(), stopped=True)
        return TrialStopped(str(exc))

    def _queue_variants(self, trial: Trial, values: dict[str, Any]) -> None:
        """A model just trained (and was stored): queue up to ``reuse.inference_variants`` trials that
        run it with other values of the searched inference knobs -- drawn from every combination of
        their choices the study has not tried -- each costing only its inference phase."""
        exp = self.exp
        inference = [s for s in exp.searched_knobs if s.knob.phase == "inference" and s.space and s.space.choices]
        assert self.study is not None
        # only as many as the trial budget still has room for (a queued trial left over would run next time)
        room = exp.trials - studies.budget_used(self.study) - studies.waiting_count(self.study)
        wanted = max(0, min(exp.reuse.inference_variants, room))
        if not inference or not wanted:
            return
        params = {s.name: trial.params[s.name] for s in exp.searched_knobs if s.name in trial.params}
        tried = studies.tried_params(self.study)
        variants = []
        for combo in itertools.product(*(s.space.choices for s in inference if s.space and s.space.choices)):
            variant = {**params, **{s.name: v for s, v in zip(inference, combo)}}
            if json.dumps(variant, sort_keys=True, default=str) not in tried:
                variants.append(variant)
        random.Random(exp.seed * 7919 + trial.number).shuffle(variants)
        for variant in variants[:wanted]:
            studies.enqueue(self.study, variant, {"variant_of": trial.number})
            if self.reporter:
                changed = ", ".join(f"{s.name}={variant[s.name]}" for s in inference if variant[s.name] != params.get(s.name))
                self.reporter.note(trial.number, f"queued a variant on its trained model: {changed}")

    def _gpu_alone(self, when: str) -> None:
        """A bound GPU must run only this worker: another process's energy would count as ours."""
        if self.gpu:
            others = gpu_foreign_processes(self.gpu["uuid"])
            if others:
                raise RuntimeError(f"process(es) {others} ran on GPU {self.gpu['uuid']} {when} the trial: its energy "
                                   "cannot be attributed to this trial")

    def _attribution(self, result: TrialResult) -> str:
        """How the trial's CPU energy relates to the host it ran on."""
        cpu_modelled = any(c.get("provenance") == "modelled" for p in result.phases.values()
                           for name, c in p.measurement.components.items() if name in ("cpu", "ram"))
        n = self.host_workers.count() if self.host_workers else 1
        if n <= 1:
            return "whole host: this worker ran alone on it"
        how = "this worker's own CPU time (process tree)" if cpu_modelled else "the host's counters while it ran"
        return (f"apportioned: {n} greenknobs workers shared this host; CPU energy is {how}, and contention "
                "inflates it -- run one worker per host for comparable figures")

    def _failed(self, trial: Trial, run_id: str, exc: BaseException, started: float) -> TrialFailed | TrialStopped:
        """Record a failure everywhere (Optuna, MLflow with the traceback, the console) and decide
        whether the search can go on: the same unexpected error several trials in a row is a bug.

        A combination that cannot run (IncompatibleKnobs) is not a failure of the code: it is
        recorded PRUNED with every constraint violated, so the samplers learn to avoid that region
        (TPE and NSGA-II ignore FAIL trials, and would propose it again and again)."""
        infeasible = isinstance(exc, IncompatibleKnobs)
        reason = f"{type(exc).__name__}: {exc}"
        trial.set_user_attr("fail_reason", ("infeasible: " if infeasible else "") + str(exc))
        trial.set_user_attr("fail_type", type(exc).__name__)
        self.tracker.fail_trial(run_id, reason, infeasible, traceback.format_exc())
        self._current_run = None
        self._record_duration(started)
        if self.reporter:
            self.reporter.trial_done(trial.number, None, reason, self._left(), self._eta())
        if infeasible and not trial.user_attrs.get("baseline"):  # a baseline that cannot run ends the search
            for name in constraint_names(self.exp):
                trial.set_constraint(name, 1.0)
            return TrialStopped(reason)
        if not infeasible:
            signature = (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            count = self._streak[1] + 1 if self._streak and self._streak[0] == signature else 1
            self._streak = (signature, count)
            if count >= SAME_ERROR_LIMIT:
                self._abort = (f"the same error ended {count} trials in a row ({reason}); that is a bug, not a bad "
                               f"knob value -- the search stops here. The traceback is in the MLflow run of trial "
                               f"{trial.number} (artifact traceback.txt)")
        return TrialFailed(reason)

    def _reuse(self, trial: Trial, twin: FrozenTrial) -> tuple[float, float]:
        """An exact duplicate of a completed trial (after canonicalisation): its result, marked so."""
        for key in ("result", "summary"):
            trial.set_user_attr(key, twin.user_attrs[key])
        trial.set_user_attr("duplicate_of", twin.number)
        trial.set_user_attr("spent", {"energy_j": 0.0, "phases": {}, "provenance": "none (result reused)"})
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
            assert self.study is not None
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
            attribution=self._attribution(result),
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

    def _prepare(self, lock: StudyLock) -> None:
        """What must happen once per study, whichever of several workers starting together gets
        here first: tables, the study and its fingerprint, the MLflow experiment and parent run
        (its id kept on the study), the baseline queued. Then this worker's seed stream."""
        exp = self.exp
        with lock.held():
            study = studies.open_study(exp, heartbeat_s=self.heartbeat_s, grace_s=self.grace_s)
            studies.name_objectives(study, exp)
            parent = self.tracker.start_study(exp, study.study_name, carbon=self.carbon, idle_power=self.idle_power,
                                              meter=self.meter_choice,
                                              parent_id=study.user_attrs.get("mlflow_parent_run_id"))
            if study.user_attrs.get("mlflow_parent_run_id") != parent:
                study.set_user_attr("mlflow_parent_run_id", parent)
            # this host's own dead trials at once, others' after the grace period; the baseline is queued
            # before any other retry (a waiting trial runs in the order it was queued, and every other
            # trial is compared with the baseline)
            self._sweep(study, requeue=False)
            self.requeued += studies.requeue_interrupted(study, only_baseline=True)
            role = {"ablation": {"kind": "baseline", "repeat": 0}} if self.isolation else None
            studies.ensure_baseline_queued(study, exp, role)
            self.requeued += studies.requeue_interrupted(study)
            workers = study.user_attrs.get("workers", [])
            study.set_user_attr("workers", [*workers, self.worker])
            study.sampler = studies._sampler(exp, studies.sampler_seed(exp, len(workers)))
        self.study = study

    def _sweep(self, study: Study, requeue: bool = True) -> None:
        """The janitor's round: fail the trials of dead workers, close their MLflow runs as KILLED,
        re-queue them with their knob values (fresh attributes; their spent energy stays counted)."""
        for dead in studies.fail_dead(study, is_gone):
            run_id = dead.user_attrs.get("mlflow_run_id")
            if run_id:
                self.tracker.kill_trial(run_id)
            if self.reporter:
                self.reporter.note(dead.number, f"trial {dead.number}: its worker died; failed and re-queued")
        if requeue:
            self.requeued += studies.requeue_interrupted(study)

    def run(self) -> SearchOutcome:
        exp = self.exp
        storage_url = normalise_db_url(exp.storage, "storage")
        check_reachable(storage_url, "storage")  # an unreachable or refusing database: one line, before anything
        check_inputs(exp)  # a missing or malformed dataset fails here, with nothing written to the study
        claims = [SqliteClaim(storage_url, "the Optuna storage"), SqliteClaim(self.tracker.uri, "the MLflow store")]
        lock = StudyLock(storage_url, exp.name)
        janitor = None
        self.host_workers = HostWorkers()
        try:
            self.idle_power = measure_idle(exp)
            self._prepare(lock)
            study = self.study
            assert study is not None
            finished, failed_before = studies.finished_count(study), studies.failed_count(study)
            janitor = Periodic(lambda: self._locked_sweep(lock), self.heartbeat_s, "greenknobs-janitor")
            if self.isolation:  # the plan is what is queued
                self._planned = studies.waiting_count(study)
            else:
                self._planned = max(0, exp.trials - studies.budget_used(study))
            if self.reporter:
                self.reporter.search_started(exp, finished, self._planned, self.meter_choice)
            if self._planned:
                self._warm_up()
                _freeze_long_lived()
                self._loop(lock)
            if self._abort:
                raise GreenknobsError(self._abort)
            return SearchOutcome(study, ran=studies.finished_count(study) - finished,
                                 failed=studies.failed_count(study) - failed_before, stopped_by=self._stopped_by,
                                 spent_j=studies.spent_j(study))
        finally:
            if janitor is not None:
                janitor.close()
            self.host_workers.close()
            lock.close()
            for claim in claims:
                claim.close()

    def _locked_sweep(self, lock: StudyLock) -> None:
        with lock.held():
            assert self.study is not None
            self._sweep(self.study)

    def _next_trial(self, lock: StudyLock) -> Trial | None:
        """Take the next trial under the study lock, so the budget is exact across workers; None
        when the budget (or the queued plan) is spent. Waits while another worker runs the baseline."""
        exp, study = self.exp, self.study
        assert study is not None
        started = time.monotonic()
        while True:
            with lock.held():
                if self.isolation and not studies.waiting_count(study):
                    return None
                if not self.isolation and studies.budget_used(study) >= exp.trials:
                    return None
                if exp.energy_budget_j is not None and studies.spent_j(study) >= exp.energy_budget_j:
                    self._stopped_by = (f"energy budget: {studies.spent_j(study):.0f} J spent of "
                                        f"{exp.energy_budget_j:.0f} J")
                    return None
                state = studies.baseline_state(study)
                if state == "failed" and studies.baseline_trial(study) is None and not studies.waiting_count(study):
                    raise GreenknobsError("the baseline trial failed; every other trial is compared with it, so the "
                                          "search stops here (its reason is in the study and MLflow)")
                if state in ("complete", "waiting", "none"):
                    trial = studies.ask(study)
                    trial.set_user_attr("worker", self.worker)
                    return trial
            if exp.timeout_s and time.monotonic() - started > exp.timeout_s:
                self._stopped_by = "timeout"
                return None
            wait(2.0)  # the baseline runs in another worker: every trial is compared with it

    def _loop(self, lock: StudyLock) -> None:
        study = self.study
        assert study is not None
        deadline = time.monotonic() + self.exp.timeout_s if self.exp.timeout_s else None
        while not self._abort:
            if deadline is not None and time.monotonic() >= deadline:
                self._stopped_by = "timeout"
                return
            trial = self._next_trial(lock)
            if trial is None:
                return
            try:
                with Heartbeat(study._storage, trial._trial_id, self.heartbeat_s):
                    values = self._objective(trial)
            except TrialStopped:
                studies.tell(study, trial, None, pruned=True)
                continue
            except TrialFailed:
                studies.tell(study, trial, None)
                if trial.user_attrs.get("baseline"):
                    raise GreenknobsError(f"the baseline trial failed ({trial.user_attrs.get('fail_reason')}); every "
                                          "other trial is compared with it, so the search stops here") from None
                continue
            except BaseException:  # Ctrl-C, SIGTERM: the trial is cut off, re-queued by the next run
                studies.tell(study, trial, None)
                if self._current_run:
                    self.tracker.kill_trial(self._current_run)
                raise
            studies.tell(study, trial, values)
            gc.collect()

    def _warm_up(self) -> None:
        """Pay this process's one-off costs (imports, first loads) on a small unmeasured run before
        the first trial, so the baseline is not inflated by them; its energy still counts in the
        search's cost (study attribute ``overhead``)."""
        options = self.pipeline.warmup_options()
        if options is None or (self.pipeline.name, repr(options)) in _WARMED:
            return
        _WARMED.add((self.pipeline.name, repr(options)))
        exp = self.exp
        meter = create_meter(exp.meter.name, exp.meter.params)
        energy: list[float] = []
        provenance: list[str] = []

        def add(phase: str, result: PhaseResult) -> None:
            energy.append(result.energy_j)
            provenance.append(result.measurement.provenance)

        started = time.perf_counter()
        try:
            warm = type(self.pipeline)(options)
            run_trial(warm, [(s.knob, s.default) for s in exp.knobs], meter, self.runtime, exp.seed, progress=add)
            outcome = "ok"
        except Exception as exc:  # a warm-up that fails only means trial 0 pays the one-off costs itself
            outcome = f"{type(exc).__name__}: {exc}"
        finally:
            meter.close()
        entry = {"kind": "warm-up", "energy_j": sum(energy), "provenance": combine_provenance(provenance),
                 "time_s": time.perf_counter() - started, "outcome": outcome}
        assert self.study is not None
        self.study.set_user_attr("overhead", [*self.study.user_attrs.get("overhead", []), entry])
        if self.reporter:
            self.reporter.note(-1, f"warm-up run (small subset, not a trial): {entry['energy_j']:.1f} J "
                                   f"{entry['provenance']} in {entry['time_s']:.1f} s -- counted in the search's cost")
