"""The knob search: runs an experiment's trials in its Optuna study.

``Search`` is the facade the CLI, the isolation study and the tests use; it wires the parts, each
with one job:

* objective.py -- one trial: values drawn and canonicalised, run, summarised, recorded;
* policies.py -- hopeless-trial stops, inference variants, twin reuse, the failure streak;
* worker.py -- the loop: the study prepared once, trials taken under the study lock with a
  heartbeat, the janitor, the warm-up, the budgets and the timeout;
* figures.py -- relative figures and constraints; progress.py -- the reporter, ETA, the outcome.
"""

from __future__ import annotations

from typing import Any

from greenknobs.config import Experiment
from greenknobs.devices.gpu import bind as bind_gpu
from greenknobs.errors import ConfigError
from greenknobs.meters import create_meter, resolve
from greenknobs.meters.base import EnergyMeter
from greenknobs.meters.carbon import carbon_intensity
from greenknobs.phase_store import PhaseStore
from greenknobs.pipeline import pipeline_class
from greenknobs.runtime import detect_runtime
from greenknobs.search import study as studies
from greenknobs.search.coordination import worker_identity
from greenknobs.search.figures import constraint_names, constraint_values, relative_figures, trivial_bar
from greenknobs.search.objective import Objective, Outcome, Policies
from greenknobs.search.policies import (
    REACH_MIN_TRIALS,
    REACH_SAFETY,
    SAME_ERROR_LIMIT,
    FailureStreak,
    HopelessStop,
    InferenceVariants,
    ProgressCheck,
    TwinReuse,
)
from greenknobs.search.progress import Progress, Reporter, SearchOutcome
from greenknobs.search.study import Study, Trial
from greenknobs.search.worker import Worker, measure_idle

__all__ = ["Search", "SearchOutcome", "Reporter", "Outcome", "study_carbon_intensity",
           "measure_idle", "relative_figures", "trivial_bar", "constraint_names", "constraint_values",
           "SAME_ERROR_LIMIT", "REACH_SAFETY", "REACH_MIN_TRIALS"]


def study_carbon_intensity(exp: Experiment) -> dict[str, Any]:
    """g CO2e/kWh for the experiment's grid (CodeCarbon's offline tables), with its source and PUE."""
    try:
        g_per_kwh, source = carbon_intensity(exp.carbon.country_iso_code, exp.carbon.region)
    except ValueError as exc:
        raise ConfigError("carbon.region", str(exc)) from None
    return {"g_per_kwh": g_per_kwh, "source": source, "pue": exp.carbon.pue}


class Search:
    """Runs an experiment's study (creating it on first use) until its total trial budget, its
    energy budget or its timeout is spent.

    ``isolation=True`` runs an isolation study instead (search/ablation.py): the trials are the
    queued plan, and repeats are the point, so nothing is reused (neither an identical earlier
    trial nor stored phase outputs) and no trial is stopped early.
    """

    def __init__(self, exp: Experiment, tracker, reporter: Reporter | None = None, *, isolation: bool = False,
                 heartbeat_s: float = studies.HEARTBEAT_S, grace_s: float = studies.GRACE_S, gpu: str | None = None,
                 db_retry_s: float | None = None):
        self.exp = exp
        self.db_retry_s = db_retry_s  # how long a database outage is waited out (None: outages.DEFAULT_WINDOW_S)
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
        self.study: Study | None = None  # set by run(), once the worker has opened it
        self.worker = {**worker_identity(), **({"gpu": self.gpu} if self.gpu else {})}
        self.requeued = 0
        # phase-output reuse: not in an isolation study, whose repeats must each really run
        self.store = (PhaseStore(exp.results_dir / "reuse", max_bytes=int(exp.reuse.max_gb * 1e9))
                      if exp.reuse.enabled and not isolation else None)
        self.policies = Policies(hopeless=HopelessStop(exp), variants=InferenceVariants(exp, reporter),
                                 twins=TwinReuse(reporter), streak=FailureStreak())

    def _meter(self) -> EnergyMeter:
        """A fresh meter for one trial (or the warm-up, or the idle baseline)."""
        return create_meter(self.exp.meter.name, self.exp.meter.params)

    def _hopeless_check(self, trial: Trial) -> ProgressCheck | None:
        """The progress check a trial's training loop would get (None before the study is open)."""
        return None if self.study is None else self.policies.hopeless.check_for(self.study, trial)

    def run(self) -> SearchOutcome:
        exp = self.exp
        progress = Progress(exp.trials)
        objective = Objective(exp, self.pipeline, self.runtime, self.tracker, self.reporter, progress, self.policies,
                              make_meter=self._meter, carbon=self.carbon, store=self.store, isolation=self.isolation,
                              gpu=self.gpu)
        worker = Worker(exp, self.tracker, self.reporter, objective, progress, isolation=self.isolation,
                        heartbeat_s=self.heartbeat_s, grace_s=self.grace_s, identity=self.worker,
                        meter_choice=self.meter_choice, make_meter=self._meter, db_retry_s=self.db_retry_s)
        self._worker = worker
        try:
            return worker.run()
        finally:
            self.study, self.requeued = worker.study, worker.requeued

    def settle_logging(self) -> bool:
        """After the front is published: wait (up to the retry window) for MLflow logging deferred
        during an outage to catch up, and record on the study the run ids that replaced
        placeholders. True when MLflow holds everything."""
        worker = getattr(self, "_worker", None)
        if worker is None or worker.study is None or not hasattr(self.tracker, "flush"):
            return True
        worker.settle_logging(worker.study)
        return not self.tracker.deferred
