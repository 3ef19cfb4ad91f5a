"""The worker loop: one process working on a study, alone or beside others.

It checks its inputs, prepares the study once (under the study lock), warms up, then takes trials
one at a time under the lock (so the trial budget is exact across workers), runs each through the
objective with a heartbeat, and records the outcome in the study -- until the trial budget, the
energy budget, the timeout or the queued plan is spent. A janitor thread fails and re-queues the
trials of workers that died.

Outages: every database call waits out a lost connection for the retry window (outages.py); a
trial's outcome that still cannot be written is kept on disk (``runs/<name>/kept-outcomes/``) and
written by the next worker started here, before anything else -- the trial is not run again. The
MLflow tracker defers its logging while its server is unreachable (tracking.py); at the end the
worker waits for it to catch up, for up to the same window.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from greenknobs import fingerprint
from greenknobs.config import Experiment, check_inputs
from greenknobs.errors import GreenknobsError, ServiceOutage
from greenknobs.meters import create_meter
from greenknobs.meters.base import EnergyMeter
from greenknobs.meters.noise import measure_idle_power
from greenknobs.phases import PhaseResult, combine_provenance
from greenknobs.pipeline import run_trial
from greenknobs.runtime import machine
from greenknobs.search import drift, freshness, warm_start
from greenknobs.search import study as studies
from greenknobs.search.coordination import (
    DATABASE,
    Heartbeat,
    HostWorkers,
    Periodic,
    SqliteClaim,
    StudyLock,
    check_reachable,
    is_gone,
    wait,
)
from greenknobs.search.objective import COMPLETE, FAIL, Objective, Outcome
from greenknobs.search.progress import Progress, Reporter, SearchOutcome
from greenknobs.search.study import Study, Trial
from greenknobs.urls import mask_password, normalise_db_url

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


def measure_idle(exp: Experiment, make_meter: Callable[[], EnergyMeter] | None = None) -> dict[str, Any] | None:
    """Idle power over ``meter.idle_baseline_s`` seconds before the study (for net energy), with
    the meter and provenance behind it."""
    if exp.meter.idle_baseline_s <= 0:
        return None
    meter = make_meter() if make_meter is not None else create_meter(exp.meter.name, exp.meter.params)
    try:
        return measure_idle_power(meter, exp.meter.idle_baseline_s)
    finally:
        meter.close()


class Worker:
    """Runs an experiment's study through ``objective`` until a budget, the timeout or the plan is spent."""

    def __init__(self, exp: Experiment, tracker, reporter: Reporter | None, objective: Objective, progress: Progress,
                 *, isolation: bool, heartbeat_s: float, grace_s: float, identity: dict[str, Any],
                 meter_choice: dict[str, str], make_meter: Callable[[], EnergyMeter], db_retry_s: float | None = None):
        self.exp = exp
        self.tracker = tracker
        self.reporter = reporter
        self.objective = objective
        self.progress = progress
        self.isolation = isolation
        self.heartbeat_s, self.grace_s = heartbeat_s, grace_s
        self.identity = identity
        self.meter_choice = meter_choice
        self.make_meter = make_meter
        self.study: Study | None = None  # opened under the study lock in run(): workers may start together
        self.requeued = 0
        self.stopped_by = "queued plan" if isolation else "trial budget"
        self.sampler_seed: int | None = None
        if db_retry_s is not None:
            DATABASE.window_s = db_retry_s
        self.kept_dir = exp.results_dir / "kept-outcomes"

    def _note(self, message: str) -> None:
        if self.reporter:
            self.reporter.note(-1, message)

    def run(self) -> SearchOutcome:
        exp = self.exp
        storage_url = normalise_db_url(exp.storage, "storage")
        check_reachable(storage_url, "storage")  # an unreachable or refusing database: one line, before anything
        check_inputs(exp)  # a missing or malformed dataset fails here, with nothing written to the study
        claims = [SqliteClaim(storage_url, "the Optuna storage"), SqliteClaim(self.tracker.uri, "the MLflow store")]
        lock = StudyLock(storage_url, exp.name)
        janitor = None
        host_workers = self.objective.host_workers = HostWorkers()
        DATABASE.service = f"the study's database ({mask_password(storage_url)})"
        DATABASE.listeners.append(self._note)
        listeners = getattr(self.tracker, "listeners", [])
        listeners.append(self._note)
        try:
            self.objective.idle_power = measure_idle(exp, self.make_meter)
            study = self._prepare(lock)
            finished, failed_before = studies.finished_count(study), studies.failed_count(study)
            janitor = Periodic(lambda: self._locked_sweep(lock), self.heartbeat_s, "greenknobs-janitor")
            if self.isolation:  # the plan is what is queued
                self.progress.planned = studies.waiting_count(study)
            else:
                self.progress.planned = max(0, exp.trials - studies.budget_used(study))
            if self.reporter:
                self.reporter.search_started(exp, finished, self.progress.planned, self.meter_choice)
            if getattr(self.tracker, "adopted", 0):
                self._note(f"MLflow: {self.tracker.adopted} log records an earlier worker on this host had deferred "
                           "(tracking server unreachable) were replayed at start")
            if self.progress.planned:
                self._warm_up()
                _freeze_long_lived()
                self._loop(lock)
            abort = self.objective.policies.streak.abort
            if abort:
                raise GreenknobsError(abort)
            self.settle_logging(study)
            return SearchOutcome(study, ran=studies.finished_count(study) - finished,
                                 failed=studies.failed_count(study) - failed_before, stopped_by=self.stopped_by,
                                 spent_j=studies.spent_j(study), outages=self.outages())
        finally:
            if janitor is not None:
                janitor.close()
            host_workers.close()
            lock.close()
            for claim in claims:
                claim.close()
            with contextlib.suppress(ValueError):
                DATABASE.listeners.remove(self._note)
            with contextlib.suppress(ValueError):
                listeners.remove(self._note)

    def outages(self) -> list[dict[str, Any]]:
        """What this worker rode out: database outages (retries) and deferred MLflow logging."""
        found = [e.to_dict() for e in DATABASE.episodes]
        return found + (self.tracker.outages() if hasattr(self.tracker, "outages") else [])

    def settle_logging(self, study: Study) -> None:
        """Give deferred MLflow logging up to the retry window to catch up, and record on the study
        the run ids that replaced placeholders (a finished trial's own attributes cannot change)."""
        if not hasattr(self.tracker, "flush"):
            return
        if self.tracker.deferred:
            self._note(f"waiting up to {DATABASE.window_s:.0f} s for deferred MLflow logging to catch up")
            if not self.tracker.flush(DATABASE.window_s):
                self._note(f"MLflow is still unreachable: {self.tracker.pending} log records stay in "
                           f"{self.tracker.spool_dir}, replayed by the next greenknobs command here that opens it")
        self._record_run_ids(study)

    def _record_run_ids(self, study: Study) -> None:
        resolved = self.tracker.resolved()
        if not resolved:  # the common case: MLflow never went away
            return
        known = studies.run_aliases(study)
        new = {k: v for k, v in resolved.items() if known.get(k) != v}
        if new:
            studies.record_run_ids(study, new)

    # -- once per study ----------------------------------------------------------------------------
    def _prepare(self, lock: StudyLock) -> Study:
        """What must happen once per study, whichever of several workers starting together gets
        here first: tables, the study and its fingerprint, the MLflow experiment and parent run
        (its id kept on the study), the baseline queued. Then this worker's seed stream."""
        exp = self.exp
        with lock.held():
            study = studies.open_study(exp, heartbeat_s=self.heartbeat_s, grace_s=self.grace_s)
            self._check_fresh(study)  # the same data, code and libraries the study started on, or refused
            hardware = {**{k: v for k, v in machine().items() if k in ("cpu", "cores", "gpus")},
                        "meter": self.meter_choice.get("name")}
            if "hardware" not in study.user_attrs:  # what a later study warm-starting from this one checks
                study.set_user_attr("hardware", hardware)
            if not self.isolation:
                self.objective.warm = warm_start.load(exp, hardware)
            studies.name_objectives(study, exp)
            parent = self.tracker.start_study(exp, study.study_name, carbon=self.objective.carbon,
                                              idle_power=self.objective.idle_power, meter=self.meter_choice,
                                              parent_id=study.user_attrs.get("mlflow_parent_run_id"))
            if study.user_attrs.get("mlflow_parent_run_id") != parent:
                study.set_user_attr("mlflow_parent_run_id", parent)
            if hasattr(self.tracker, "resolved"):
                self._record_run_ids(study)  # runs an earlier worker here created while MLflow was away
            self._record_kept(study)  # before the sweep: a kept result makes its trial complete, not dead
            # this host's own dead trials at once, others' after the grace period; the baseline is queued
            # before any other retry (a waiting trial runs in the order it was queued, and every other
            # trial is compared with the baseline)
            self._sweep(study, requeue=False)
            self.requeued += studies.requeue_interrupted(study, only_baseline=True)
            role = {"ablation": {"kind": "baseline", "repeat": 0}} if self.isolation else None
            studies.ensure_baseline_queued(study, exp, role)
            self.requeued += studies.requeue_interrupted(study)
            workers = study.user_attrs.get("workers", [])
            study.set_user_attr("workers", [*workers, self.identity])
            self.sampler_seed = studies.sampler_seed(exp, len(workers))
            base = studies.baseline_trial(study)
            study.sampler = self._sampler(base.values[0] if base and base.values else None)
            self._note_warm_start(study)
        self.study = study
        return study

    def _sampler(self, baseline_j: float | None):
        """This worker's sampler: cost-aware (unless an isolation study), learning from a warm start."""
        warm = self.objective.warm
        return studies._sampler(self.exp, self.sampler_seed, baseline_j,
                                cost=None if self.isolation else self.objective.sampling_cost,
                                prior=warm.trials if warm is not None else None)

    def _note_warm_start(self, study: Study) -> None:
        """What the warm start contributes, stated on the study (and so in the report)."""
        if self.objective.warm is not None:
            study.set_user_attr("warm_start", self.objective.warm.describe(study))

    def _check_fresh(self, study: Study) -> None:
        """A study continues only on what its results were produced from: data and model content,
        code, library versions. A change refuses with one line, unless accepted (--accept-changes):
        then recorded on the study, and the stored phase outputs (built from the old) dropped."""
        recorded = studies.recorded_fingerprint(study)
        if not recorded:
            return
        pipeline = self.objective.pipeline
        changed = freshness.changes(recorded, pipeline)
        if not changed:
            return
        if not self.exp.accept_changes:
            raise freshness.refusal(self.exp.name, changed)
        now = freshness.of(pipeline, fingerprint.digests(recorded.get("inputs", {})))
        study.set_user_attr("accepted_changes", [*study.user_attrs.get("accepted_changes", []),
                                                 freshness.acceptance(changed)])
        study.set_user_attr("produced_from", now)
        if self.objective.store is not None:
            self.objective.store.clear()
        self._note(f"continuing on purpose although {'; '.join(changed)} changed (recorded on the study); stored "
                   "phase outputs dropped")

    def _warm_up(self) -> None:
        """Pay this process's one-off costs (imports, first loads) on a small unmeasured run before
        the first trial, so the baseline is not inflated by them; its energy still counts in the
        search's cost (study attribute ``overhead``)."""
        pipeline, runtime = self.objective.pipeline, self.objective.runtime
        options = pipeline.warmup_options()
        if options is None or (pipeline.name, repr(options)) in _WARMED:
            return
        _WARMED.add((pipeline.name, repr(options)))
        exp = self.exp
        meter = self.make_meter()
        energy: list[float] = []
        provenance: list[str] = []

        def add(phase: str, result: PhaseResult) -> None:
            energy.append(result.energy_j)
            provenance.append(result.measurement.provenance)

        started = time.perf_counter()
        safeguards: dict[str, str] = {}
        try:
            warm = type(pipeline)(options)
            safeguards = run_trial(warm, [(s.knob, s.default) for s in exp.knobs], meter, runtime, exp.seed,
                                   progress=add).safeguards
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
            if outcome != "ok":
                self.reporter.note(-1, f"the warm-up failed ({outcome}); trial 0 will show whether the code runs")
            for name, state in safeguards.items():  # before trial 0: what the search cannot do for this code
                if not state.startswith("on"):
                    self.reporter.note(-1, f"safeguard {name.replace('_', ' ')} {state}")

    # -- outcomes kept through a database outage ------------------------------------------------------
    def _keep(self, trial: Trial, outcome: Outcome) -> Path:
        """A trial's outcome the database could not take, on disk until a worker here can write it."""
        self.kept_dir.mkdir(parents=True, exist_ok=True)
        path = self.kept_dir / f"trial-{trial.number:05d}.json"
        record = {"study": self.exp.name, "storage": mask_password(normalise_db_url(self.exp.storage, "storage")),
                  "number": trial.number, "kept_at": time.time(), "worker": self.identity, **outcome.to_dict()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, default=str))
        os.replace(tmp, path)
        return path

    def _record_kept(self, study: Study) -> None:
        storage = mask_password(normalise_db_url(self.exp.storage, "storage"))
        for path in sorted(self.kept_dir.glob("trial-*.json")) if self.kept_dir.is_dir() else []:
            try:
                kept = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if kept.get("study") != self.exp.name or kept.get("storage") != storage:
                continue  # another study's (same name, another database)
            why = studies.record_outcome(study, int(kept["number"]), kept["state"], kept.get("values"),
                                         kept.get("attrs") or {}, kept.get("constraints") or {})
            path.unlink()
            self._note(f"trial {kept['number']}: its {kept['state']} result, kept on disk through a database outage, "
                       + (f"could not be recorded: {why}" if why else "is recorded now (it was not run again)"))

    # -- the janitor -------------------------------------------------------------------------------
    def _sweep(self, study: Study, requeue: bool = True) -> None:
        """The janitor's round: fail the trials of dead workers, close their MLflow runs as KILLED,
        re-queue them with their knob values (fresh attributes; their spent energy stays counted)."""
        for dead in studies.fail_dead(study, is_gone, self.grace_s):
            run_id = dead.user_attrs.get("mlflow_run_id")
            if run_id:
                self.tracker.kill_trial(run_id)
            if self.reporter:
                self.reporter.note(dead.number, f"trial {dead.number}: its worker died; failed and re-queued")
        if requeue:
            self.requeued += studies.requeue_interrupted(study)

    def _locked_sweep(self, lock: StudyLock) -> None:
        with DATABASE.at_once(), lock.held():  # during an outage, skip the round: the next one comes soon
            assert self.study is not None
            self._sweep(self.study)

    # -- the loop ----------------------------------------------------------------------------------
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
                    self.stopped_by = (f"energy budget: {studies.spent_j(study):.0f} J spent of "
                                       f"{exp.energy_budget_j:.0f} J")
                    return None
                state = studies.baseline_state(study)
                if state == "failed" and studies.baseline_trial(study) is None and not studies.waiting_count(study):
                    raise GreenknobsError("the baseline trial failed; every other trial is compared with it, so the "
                                          "search stops here (its reason is in the study and MLflow)")
                if state in ("complete", "waiting", "none"):
                    trial = studies.ask(study)
                    trial.set_user_attr("worker", self.identity)
                    return trial
            if exp.timeout_s and time.monotonic() - started > exp.timeout_s:
                self.stopped_by = "timeout"
                return None
            wait(2.0)  # the baseline runs in another worker: every trial is compared with it

    def _loop(self, lock: StudyLock) -> None:
        study = self.study
        assert study is not None
        deadline = time.monotonic() + self.exp.timeout_s if self.exp.timeout_s else None
        while not self.objective.policies.streak.abort:
            if deadline is not None and time.monotonic() >= deadline:
                self.stopped_by = "timeout"
                return
            trial = self._next_trial(lock)
            if trial is None:
                return
            try:
                with Heartbeat(study._storage, trial._trial_id, self.heartbeat_s):
                    outcome = self.objective(study, trial)
            except ServiceOutage:  # the database stayed away mid-trial: cut off, re-queued by the next worker
                self._kill_current_run()
                raise
            except BaseException:  # Ctrl-C, SIGTERM: the trial is cut off, re-queued by the next run
                with contextlib.suppress(ServiceOutage), DATABASE.at_once():  # no waiting: we are asked to stop
                    studies.tell(study, trial, None)
                self._kill_current_run()
                raise
            self._record(study, trial, outcome)
            if self.objective.budget_stop:  # the next trial would have crossed the energy budget
                self.stopped_by = (f"energy budget: {studies.spent_j(study):.0f} J spent of {self.exp.energy_budget_j:.0f} J; "
                                   f"the next trial was {self.objective.budget_stop}")
                return
            if outcome.state == COMPLETE and trial.user_attrs.get("baseline") and outcome.values:
                # the baseline's energy says how many trials the energy budget allows: size the start-up on it
                study.sampler = self._sampler(outcome.values[0])
                self._note_warm_start(study)
            if outcome.state == FAIL and trial.user_attrs.get("baseline"):
                raise GreenknobsError(f"the baseline trial failed ({outcome.attrs.get('fail_reason')}); every "
                                      "other trial is compared with it, so the search stops here") from None
            if outcome.trained:
                self.objective.policies.variants.queue(study, trial)
            if hasattr(self.tracker, "resolved"):
                self._record_run_ids(study)
            if not self.isolation and drift.due(study):
                self._drift_check(study)
            gc.collect()

    def _drift_check(self, study: Study) -> None:
        """The baseline measured again on its stored model (drift.py); a failure only means no check."""
        try:
            record = drift.check(self.objective, study)
        except Exception as exc:  # a drift check must never end a search
            self._note(f"baseline drift check failed ({type(exc).__name__}: {exc}); the search goes on")
            return
        if record is not None and self.reporter:
            self.reporter.note(-1, f"baseline re-measured on its stored model: inference {record['inference_j']:.1f} J "
                                   f"against {record['baseline_inference_j']:.1f} J in trial 0 ({record['drift']:+.1%}"
                                   f"{', contended' if record['contended'] else ''}) -- counted in the search's cost")

    def _record(self, study: Study, trial: Trial, outcome: Outcome) -> None:
        """The outcome into the study; if the database stays away longer than the retry window, it
        is kept on disk and the worker stops (one line): the next worker here writes it."""
        try:
            why = studies.record_outcome(study, trial, outcome.state, outcome.values, outcome.attrs, outcome.constraints)
            if why is not None:
                self._note(f"trial {trial.number}: its result could not be recorded: {why}")
        except ServiceOutage as exc:
            path = self._keep(trial, outcome)
            raise ServiceOutage(f"{exc}. Trial {trial.number}'s {outcome.state} result is kept in {path} and is "
                                "recorded, not run again, by the next worker started here") from None

    def _kill_current_run(self) -> None:
        if self.objective.current_run:
            self.tracker.kill_trial(self.objective.current_run)
            self.objective.current_run = None
