"""The objective: one trial, start to end. Draw its knob values, canonicalise them, take a twin's
result or run it (``run_trial``), summarise it against the baseline, work out its constraints,
record it in MLflow, and hand back its ``Outcome`` -- completed, failed or stopped on purpose.

The worker (worker.py) writes the outcome to the study: that is where a result that could not be
written (the database gone) is kept on disk until it can, without running the trial again. A
failing trial is recorded (Optuna FAIL, MLflow FAILED, the reason) and the search goes on.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from greenknobs.config import Experiment
from greenknobs.devices.gpu import foreign_processes as gpu_foreign_processes
from greenknobs.errors import GreenknobsError, HopelessTrial, IncompatibleKnobs, ServiceOutage
from greenknobs.knobs.compat import canonicalise
from greenknobs.meters.base import EnergyMeter
from greenknobs.phase_store import PhaseStore
from greenknobs.phases import TEST, VALIDATION, PhaseResult, TrialResult, combine_provenance
from greenknobs.pipeline import Pipeline, run_trial
from greenknobs.records import TrialSummary
from greenknobs.runtime import Runtime
from greenknobs.search import energy_model, freshness
from greenknobs.search import study as studies
from greenknobs.search.coordination import HostWorkers
from greenknobs.search.energy_model import EnergyModel
from greenknobs.search.figures import constraint_names, constraint_values, relative_figures
from greenknobs.search.policies import FailureStreak, HopelessStop, InferenceVariants, TwinReuse, predicted_dominated
from greenknobs.search.progress import Progress, Reporter
from greenknobs.search.study import FrozenTrial, Study, Trial
from greenknobs.search.warm_start import WarmStart

COMPLETE, PRUNED, FAIL = "complete", "pruned", "fail"


@dataclass
class Outcome:
    """How a trial ended and what records it in the study: its attributes and constraints, then its
    state -- ``complete`` (with its two objective values), ``pruned`` (stopped on purpose, or a
    combination that cannot run here) or ``fail`` -- as JSON-able data, so it can wait on disk."""

    state: str
    values: tuple[float, float] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, float] = field(default_factory=dict)
    trained: bool = False  # a feasible trial that trained (and stored) a new model: variants may follow

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "values": list(self.values) if self.values else None, "attrs": self.attrs,
                "constraints": self.constraints}


@dataclass
class Policies:
    hopeless: HopelessStop
    variants: InferenceVariants
    twins: TwinReuse
    streak: FailureStreak


class Objective:
    """Runs one trial of a study; ``isolation`` (an isolation study) reuses nothing and stops nothing.

    ``idle_power`` and ``host_workers`` are what the worker learns when it starts (before the first
    trial); ``current_run`` is the MLflow run of the trial in progress (closed as KILLED if the
    worker is interrupted)."""

    def __init__(self, exp: Experiment, pipeline: Pipeline, runtime: Runtime, tracker, reporter: Reporter | None,
                 progress: Progress, policies: Policies, *, make_meter: Callable[[], EnergyMeter],
                 carbon: dict[str, Any], store: PhaseStore | None, isolation: bool, gpu: dict[str, Any] | None):
        self.exp = exp
        self.pipeline = pipeline
        self.runtime = runtime
        self.tracker = tracker
        self.reporter = reporter
        self.progress = progress
        self.policies = policies
        self.make_meter = make_meter
        self.carbon = carbon
        self.store = store
        self.budget_stop: str | None = None  # why the last trial was not started (the energy budget)
        self._models: dict[bool, tuple[Any, EnergyModel | None]] = {}
        self.isolation = isolation
        self.gpu = gpu
        self.idle_power: dict[str, Any] | None = None
        self.host_workers: HostWorkers | None = None
        self.current_run: str | None = None
        self._base: FrozenTrial | None = None
        self._said_no_steady_serving = False
        self.warm: WarmStart | None = None  # set by the worker once the study is open

    def __call__(self, study: Study, trial: Trial) -> Outcome:
        exp = self.exp
        is_baseline = bool(trial.user_attrs.get("baseline"))
        sampled = exp.baseline_values()
        for setting in exp.searched_knobs:
            sampled[setting.name] = studies.suggest(trial, setting)
        # settings that do nothing in this combination go back to the baseline: no energy on duplicates
        values, notes = canonicalise(sampled, exp.baseline_values())
        trial.set_user_attr("knob_values", values)
        weighing = getattr(study.sampler, "last_weighing", None)  # the cost-aware sampler's, for this proposal
        if weighing:
            trial.set_user_attr("cost_weighing", weighing)
            study.sampler.last_weighing = None
        if notes:
            trial.set_user_attr("canonicalised", notes)
        index = self.progress.started()
        if self.reporter:
            searched = {s.name: values[s.name] for s in exp.searched_knobs}
            self.reporter.trial_started(trial.number, index, self.progress.planned, searched, is_baseline)
            for note in notes:
                self.reporter.note(trial.number, f"canonical: {note}")
        twin = None if is_baseline or self.isolation else self.policies.twins.find(study, trial, values)
        if twin is not None:
            return self._reuse(trial, twin)
        refusal = None if is_baseline or self.isolation else self._over_budget(study, values, trial.number)
        if refusal is not None:
            return self._not_started(trial, refusal)
        skip = None if is_baseline or self.isolation else self.policies.hopeless.dominated_at_start(
            study, self._predictor(study, values))
        if skip is not None:
            return self._not_started(trial, skip, ends_search=False)
        if not is_baseline:
            self._baseline(study)  # read now: summarising the result must not need the database
        changed = {k: v for k, v in values.items() if v != exp.baseline_values().get(k)}
        run_id = self.tracker.start_trial(trial.number, values, is_baseline, notes, changed)
        self.current_run = run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        started = time.perf_counter()
        spent: dict[str, Any] = {"j": 0.0, "phases": {}, "provenance": []}

        def spent_attr(**extra: Any) -> dict[str, Any]:
            return {"energy_j": spent["j"], "phases": dict(spent["phases"]),
                    "provenance": combine_provenance(spent["provenance"]), **extra}

        def on_phase(phase: str, result: PhaseResult) -> None:
            # saved as the trial goes: a trial that fails (or a worker that dies) still counts in the search's
            # cost; a reused phase costs only what loading it did (its attributed energy is the stored cost).
            # During a database outage the trial goes on: its outcome carries what it spent.
            used = float(result.details.get("spent_j", result.energy_j))
            spent["j"] += used
            spent["phases"][phase] = spent["phases"].get(phase, 0.0) + used
            spent["provenance"].append(result.measurement.provenance)
            studies.note_progress(trial, "spent", spent_attr())
            if self.reporter:
                self.reporter.phase_done(trial.number, phase, result, spent["j"])

        knobs = [(s.knob, values[s.name]) for s in exp.knobs]
        meter = None
        try:
            self._gpu_alone("before")
            meter = self.make_meter()
            result = run_trial(self.pipeline, knobs, meter, self.runtime, exp.seed, progress=on_phase,
                               repeats=exp.repeats, spread_warning=exp.meter.spread_warning,
                               idle_power=self.idle_power, carbon_intensity=self.carbon, store=self.store,
                               progress_check=None if is_baseline or self.isolation
                               else self.policies.hopeless.check_for(study, trial, self._predictor(study, values)),
                               trial_number=trial.number, workdir=exp.artifacts_dir / str(trial.number),
                               keep_artifacts=exp.keep_artifacts, serving=exp.serving_to_measure(),
                               workers_on_host=self.host_workers.count() if self.host_workers else 1)
            self._gpu_alone("after")
            extra = (result.reuse.get("load_j") or 0.0) * (result.reuse.get("status") != "reused") + \
                (result.reuse.get("publish_j") or 0.0)  # the store's own reads and writes, outside the phases
            if extra:
                spent["j"] += extra
            outcome = self._summarise(study, result, is_baseline)
            # what shaped this result (data and model content, code, libraries): a later run checks it
            outcome.attrs["produced_from"] = freshness.of(self.pipeline, result.inputs)
            outcome.attrs["spent"] = spent_attr(**({"store_j": extra} if extra else {}))
            summary = TrialSummary.from_dict(outcome.attrs["summary"])
            self.tracker.finish_trial(run_id, result, summary)
        except HopelessTrial as exc:  # stopped on purpose: PRUNED, its energy counted, the reason kept
            return self._stopped(trial, run_id, exc, started, spent_attr())
        except ServiceOutage:  # the database stayed away: the trial is cut off (the worker says so)
            raise
        except Exception as exc:  # every failure is recorded; the search goes on
            return self._failed(trial, run_id, exc, started, spent_attr())
        finally:
            if meter is not None:
                meter.close()
        self.policies.streak.succeeded()
        self.current_run = None
        self.progress.finished(started)
        if self.reporter:
            if result.artifacts.get("bytes"):
                self.reporter.note(trial.number, f"artefacts written in the trial: {result.artifacts['files']} files, "
                                                 f"{result.artifacts['bytes'] / 1e6:.1f} MB "
                                                 f"({'kept in ' + result.artifacts['dir'] if result.artifacts['kept'] else 'removed'})")
            if result.reuse.get("status") == "reused":
                self.reporter.note(trial.number, f"{', '.join(result.reuse['phases'])} reused from trial "
                                                 f"{result.reuse.get('from_trial', '?')} (loaded for "
                                                 f"{result.reuse.get('load_j', 0.0):.1f} J; the objective counts what "
                                                 "they cost when they ran)")
            self.reporter.trial_done(trial.number, summary, None, self.progress.left(), self.progress.eta())
        outcome.trained = (result.reuse.get("published") or {}).get("training") is True and summary.feasible \
            and not self.isolation
        return outcome

    # -- the energy budget is a promise ----------------------------------------------------------
    def energy_model(self, study: Study, objective: bool = True) -> EnergyModel | None:
        """The study's energy model (refitted when more trials have completed): the objective's
        energy, or the trials' total attributed energy (``objective=False``, what the budget needs)."""
        observed = studies.energy_observations(study, objective)
        if self.warm is not None:  # earlier studies' trials, on this study's scale
            observed = self.warm.observations(study, objective) + observed
        key = (objective, len(observed))
        if self._models.get(objective, (None, None))[0] != key:
            self._models[objective] = (key, energy_model.fit(self.exp, observed))
        return self._models[objective][1]

    def sampling_cost(self, study: Study) -> studies.Weighing | None:
        """What the energy-aware sampler weighs candidates with: the energy a trial is predicted to
        spend; the weight of that cost now -- the share of the energy budget (else of the trial
        budget) still unspent, so cost counts fully at the start and not at all at the end; and
        which candidates are predicted dominated (dearer, less the model's error, than the most
        accurate feasible trial), left out."""
        model = self.energy_model(study, objective=False)
        if model is None:
            return None
        budget = self.exp.energy_budget_j
        # the trial being proposed already counts as used: the ones before it are what was spent
        left = (1.0 - studies.spent_j(study) / budget) if budget else \
            (1.0 - max(0, studies.budget_used(study) - 1) / self.exp.trials)
        base = self.exp.baseline_values()
        top = None if self.isolation else self.policies.hopeless.most_accurate(study)
        objective_model = self.energy_model(study) if top is not None else None
        dominated = None
        if top is not None and objective_model is not None:
            bar, err = top[0], objective_model.loo_median_error
            dominated = lambda sampled: predicted_dominated(objective_model.predict({**base, **sampled}), err, bar)
        return studies.Weighing(cost=lambda sampled: model.predict({**base, **sampled}),
                                alpha=min(1.0, max(0.0, left)), dominated=dominated)

    def _predictor(self, study: Study, values: dict[str, Any]) -> Callable[[], tuple[float, float] | None]:
        """This trial's predicted objective energy and the model's median error, asked for at a rung."""
        def predict() -> tuple[float, float] | None:
            model = self.energy_model(study)
            return None if model is None else (model.predict(values), model.loo_median_error)
        return predict

    def _over_budget(self, study: Study, values: dict[str, Any], number: int) -> str | None:
        """Why a trial must not start: its predicted energy would cross the energy budget -- what
        is left after what the study spent and what trials running in other workers are predicted
        still to spend (so several workers together keep the promise, not each alone)."""
        budget = self.exp.energy_budget_j
        if budget is None:
            return None
        model = self.energy_model(study, objective=False)
        if model is None:
            return None
        reserved = studies.in_flight_j(study, model.predict, but=number)
        predicted, left = model.predict(values), budget - studies.spent_j(study) - reserved
        if predicted <= left:
            return None
        held = f", {reserved:,.0f} J held for trials running in other workers" if reserved else ""
        return (f"not started: its predicted energy, {predicted:,.0f} J, would cross the energy budget "
                f"({left:,.0f} J of {budget:,.0f} J left{held}; {model.describe()})")

    def _not_started(self, trial: Trial, reason: str, ends_search: bool = True) -> Outcome:
        if ends_search:
            self.budget_stop = reason
        if self.reporter:
            self.reporter.trial_done(trial.number, None, reason, self.progress.left(), None, stopped=True)
        return Outcome(PRUNED, attrs={"stop_reason": reason, "not_started": True,
                                      "spent": {"energy_j": 0.0, "phases": {}, "provenance": "none (not started)"}})

    # -- what a trial's outcome records --------------------------------------------------------
    def _reuse(self, trial: Trial, twin: FrozenTrial) -> Outcome:
        """An exact duplicate of a completed trial (after canonicalisation): its result, marked so."""
        values, attrs, constraints = TwinReuse.adopt(twin)
        run_id = self.tracker.reuse_trial(trial.number, twin.user_attrs.get("mlflow_run_id"), twin.number)
        attrs["mlflow_run_id"] = run_id
        if self.reporter:
            self.reporter.note(trial.number, f"same knob values as trial {twin.number} (after canonicalisation): "
                                             "its result is reused, nothing runs")
            self.reporter.trial_done(trial.number, TrialSummary.from_dict(twin.user_attrs["summary"]), None,
                                     self.progress.left(), self.progress.eta())
        return Outcome(COMPLETE, values, attrs, constraints)

    def _summarise(self, study: Study, result: TrialResult, is_baseline: bool) -> Outcome:
        exp = self.exp
        metric = exp.objectives.quality_metric
        energy = result.energy_for_scope(exp.objectives.energy_scope)
        validation, test = result.quality[VALIDATION], result.quality.get(TEST, {})
        quality, test_quality = validation[metric], test.get(metric)  # test: held out, and optional for your code
        if is_baseline:
            base_energy, base_quality, base_test = energy, quality, test_quality
        else:
            base = self._baseline(study)
            if base is None:
                raise GreenknobsError("the baseline trial has not completed; nothing to compare against")
            base_energy, base_quality = base.values
            base_test = base.user_attrs["summary"]["test_quality"]
        rel = relative_figures(exp, energy, quality, base_energy, base_quality)
        test_rel = relative_figures(exp, energy, test_quality, base_energy, base_test)
        trivial_key = self.pipeline.trivial_metrics.get(metric)
        trivial = validation.get(trivial_key) if trivial_key else None  # the guard reads validation only
        constraints = constraint_values(exp, quality, trivial, rel["quality_retained_pct"])
        summary = TrialSummary(
            energy_j=energy, scope=exp.objectives.energy_scope, metric=metric, quality=quality,
            # the per-1k figure is the steady-state serving windows' when they ran; their provenance goes with it
            provenance=result.serving["provenance"] if result.serving and exp.objectives.energy_scope == "inference_per_1k"
            else result.provenance, meter=result.meter,
            meter_params=next(iter(result.meter_params.values()), {}), time_s=result.time_s,
            energy_saving_pct=rel["energy_saving_pct"], quality_retained_pct=rel["quality_retained_pct"],
            feasible=all(v <= 0 for v in constraints.values()), constraints=constraints, trivial_quality=trivial,
            test_quality=test_quality, test_quality_retained_pct=test_rel["quality_retained_pct"],
            attribution=self._attribution(result),
            carbon_g=result.carbon_g() or {}, net_energy_j=result.net_energy_j())
        attrs = {"result": json.loads(json.dumps(result.to_dict(), default=str)),
                 "summary": json.loads(json.dumps(summary.to_dict(), default=str))}
        if exp.serving_to_measure() is not None and result.serving is None:
            attrs["serving_fallback"] = self._no_steady_serving()
        return Outcome(COMPLETE, (summary.energy_j, summary.quality), attrs, constraints)

    def _no_steady_serving(self) -> str:
        """The experiment asked for steady-state serving and the code measured none: say so, once."""
        why = ("the pipeline measured no steady-state serving (it never calls trial.serving_energy(...)): its J per "
               "1,000 predictions is the inference phase's energy per prediction, warm-up and scoring included")
        if self.reporter and not self._said_no_steady_serving:
            self.reporter.note(-1, why)
        self._said_no_steady_serving = True
        return why

    def _baseline(self, study: Study) -> FrozenTrial | None:
        """The study's completed baseline, read once: it never changes, and a result summarised
        during a database outage must not need the database."""
        if self._base is None:
            self._base = studies.baseline_trial(study)
        return self._base

    def _stopped(self, trial: Trial, run_id: str, exc: HopelessTrial, started: float,
                 spent: dict[str, Any]) -> Outcome:
        self.tracker.stop_trial(run_id, str(exc))
        self.current_run = None
        self.progress.finished(started)
        if self.reporter:
            self.reporter.trial_done(trial.number, None, str(exc), self.progress.left(), self.progress.eta(),
                                     stopped=True)
        return Outcome(PRUNED, attrs={"stop_reason": str(exc), "spent": spent})

    def _failed(self, trial: Trial, run_id: str, exc: BaseException, started: float, spent: dict[str, Any]) -> Outcome:
        """Record a failure everywhere (Optuna, MLflow with the traceback, the console) and decide
        whether the search can go on: the same unexpected error several trials in a row is a bug.

        A combination that cannot run (IncompatibleKnobs) is not a failure of the code: it is
        recorded PRUNED with every constraint violated, so the samplers learn to avoid that region
        (TPE and NSGA-II ignore FAIL trials, and would propose it again and again)."""
        infeasible = isinstance(exc, IncompatibleKnobs)
        reason = f"{type(exc).__name__}: {exc}"
        attrs = {"fail_reason": ("infeasible: " if infeasible else "") + str(exc), "fail_type": type(exc).__name__,
                 "spent": spent}
        self.tracker.fail_trial(run_id, reason, infeasible, traceback.format_exc())
        self.current_run = None
        self.progress.finished(started)
        if self.reporter:
            self.reporter.trial_done(trial.number, None, reason, self.progress.left(), self.progress.eta(),
                                     infeasible=infeasible)
        if infeasible and not trial.user_attrs.get("baseline"):  # a baseline that cannot run ends the search
            return Outcome(PRUNED, attrs=attrs, constraints={name: 1.0 for name in constraint_names(self.exp)})
        if not infeasible:
            self.policies.streak.failed(exc, reason, trial.number)
        return Outcome(FAIL, attrs=attrs)

    # -- facts about where the trial ran ----------------------------------------------------------
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
