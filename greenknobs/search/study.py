"""The Optuna study behind a search: storage, sampler, the baseline, re-queued trials, the front.
The only module importing optuna; the rest of greenknobs talks to studies through it.

Trial 0 is the baseline (every knob at its default), enqueued once per study. Objectives:
minimise energy (J, over the experiment's scope) and maximise/minimise the quality metric.
Everything a later step needs is stored in the trial's user attributes, so the study in its
storage is the record: nothing lives only in this process.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, Trial, TrialState

from greenknobs.config import Experiment
from greenknobs.errors import ConfigError, GreenknobsError, ServiceOutage
from greenknobs.knobs.base import KnobSetting
from greenknobs.search.coordination import DATABASE, check_sqlite_intact, damaged_sqlite
from greenknobs.urls import mask_password, normalise_db_url, sqlite_path

T = TypeVar("T")

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and the retry callback are marked experimental; they are what makes dead workers recoverable.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# our own loop asks and tells (to keep the budget exact across workers) and beats the heartbeat itself
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

# A running trial's worker records a heartbeat every HEARTBEAT_S; a trial silent for GRACE_S is
# taken for dead, failed and re-queued. The beat runs on its own thread (it goes on through hour-long
# GPU trials); the grace covers database hiccups. Override: --heartbeat-s / --grace-s.
HEARTBEAT_S = 30
GRACE_S = 300

Study = optuna.Study
__all__ = ["Study", "Trial", "FrozenTrial", "TrialState", "TrialPruned", "make_storage", "mask_password",
           "open_study", "suggest", "baseline_trial", "ensure_baseline_queued", "requeue_interrupted",
           "front_trials", "finished_count", "completed_twin", "budget_used", "baseline_state", "ask", "tell",
           "fail_dead", "sampler_seed"]
TrialPruned = optuna.TrialPruned


# -- storage ---------------------------------------------------------------------------------
class RetryingRDBStorage(RDBStorage):
    """Optuna's RDBStorage riding out lost connections: every call that fails because the database
    went away (a restart, a fail-over) is tried again with backoff for the retry window
    (``coordination.DATABASE``), on a fresh connection (the pool pre-pings). That is safe because
    each call is one transaction that either committed or did not: reads and attribute upserts
    repeat harmlessly, a repeated parameter insert is ignored (unique key), and a repeated outcome
    whose first commit did land is recognised below. A damaged SQLite file is one clear line."""

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        tries = 0

        def once() -> bool:
            nonlocal tries
            tries += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                # an earlier try's commit landed and only its answer was lost: done, not an error
                if tries > 1 and RDBStorage.get_trial(self, trial_id).state == state:
                    return True
                raise

        return _call(self, once, "record a trial's outcome")


_WHAT = {"create_new_study": "create the study", "_create_new_trial": "start a trial",
         "create_new_trial": "start a trial", "_set_trial_param": "record a trial's knob values",
         "set_trial_param": "record a trial's knob values", "set_trial_user_attr": "record a trial's attributes",
         "set_trial_system_attr": "record a trial's attributes", "set_trial_intermediate_value": "record a trial's progress",
         "set_study_user_attr": "record the study's attributes", "set_study_system_attr": "record the study's attributes",
         "record_heartbeat": "record a heartbeat", "delete_study": "delete a study"}
_READS = ("get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
          "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
          "get_trial_param", "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "_get_trials",
          "get_best_trial", "_get_best_trial_id", "_get_stale_trial_ids")


def _call(storage: RDBStorage, fn: Callable[[], T], what: str) -> T:
    try:
        return DATABASE.call(fn, what)
    except Exception as exc:
        damage = damaged_sqlite(exc)
        if damage is None:
            raise
        raise GreenknobsError(f"storage {mask_password(str(storage.url))}: the SQLite file is damaged ({damage}); "
                              "restore it from a backup, or move it aside to start the study afresh") from None


def _retried(name: str) -> Callable[..., Any]:
    base = getattr(RDBStorage, name)
    what = _WHAT.get(name, "read the study")

    @functools.wraps(base)
    def method(self, *args, **kwargs):
        return _call(self, lambda: base(self, *args, **kwargs), what)

    return method


for _name in (*_WHAT, *_READS):  # the calls Study and Optuna's cached storage make on the backend
    setattr(RetryingRDBStorage, _name, _retried(_name))


def make_storage(url: str, heartbeat_s: float = HEARTBEAT_S, grace_s: float = GRACE_S) -> RDBStorage:
    """Any SQLAlchemy URL (the PostgreSQL driver normalised); SQLite files get their folder created,
    and a damaged one is refused in one line. Lost connections are detected before use (pre-ping)
    and calls ride out an outage for the retry window (RetryingRDBStorage).

    No stale-trial callback: Optuna's retry callback copies the dead attempt's user attributes
    (its MLflow run, its energy) into the retry; the janitor (worker.py) re-queues with fresh ones."""
    url = normalise_db_url(url, "storage")
    path = sqlite_path(url)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        check_sqlite_intact(path, f"storage {mask_password(url)}")
    try:
        return RetryingRDBStorage(
            url,
            heartbeat_interval=max(1, int(heartbeat_s)),
            grace_period=max(2, int(grace_s)),
            engine_kwargs=_engine_kwargs(url) if path is None else None,
        )
    except Exception as exc:  # SQLAlchemy/driver errors: bad URL, server down, auth
        raise GreenknobsError(f"cannot open storage {mask_password(url)}: {_first_line(exc)}") from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    """A pooled connection the server dropped (a restart) is found by a ping before use and
    replaced; a connection attempt to a host that does not answer gives up after 10 s (and the
    retry window takes over) instead of hanging."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return mask_password(text.splitlines()[0]) if text else type(exc).__name__


# -- sampler -----------------------------------------------------------------------------------
def sampler_seed(exp: Experiment, worker_index: int) -> int:
    """The seed stream of the ``worker_index``-th process to work on a study: the experiment's own
    seed for the first (a fresh single-process study is reproducible), a distinct one for every
    later worker or resumed run (so parallel and resumed runs never repeat suggestions)."""
    return exp.seed if worker_index == 0 else (exp.seed * 1_000_003 + 7919 * worker_index) % (2**31 - 1)


def expected_trials(exp: Experiment, baseline_j: float | None = None) -> int:
    """How many trials the search will run: the trial budget, or fewer where the energy budget binds
    first (a trial costs about half the baseline's energy on average: cheaper knobs, stored phases)."""
    if exp.energy_budget_j is None or not baseline_j:
        return exp.trials
    return max(1, min(exp.trials, int(exp.energy_budget_j / (0.5 * baseline_j))))


@dataclass
class Weighing:
    """What the energy-aware sampler weighs candidates with, asked of the search at each proposal."""

    cost: Callable[[dict[str, Any]], float]  # the energy a trial with these sampled values is predicted to spend
    alpha: float  # how much cost weighs now: 1 at the start, falling to 0 as the budget is spent
    dominated: Callable[[dict[str, Any]], bool] | None = None  # predicted dominated before it runs: left out


SamplingCost = Callable[[optuna.Study], "Weighing | None"]


# trials of earlier studies, re-expressed on this study's scale (warm starts); [] before its baseline
PriorTrials = Callable[[optuna.Study], list[FrozenTrial]]


class _WithPrior:
    """The study as the sampler sees it: its own trials plus a warm start's (re-expressed ones)."""

    def __init__(self, study: optuna.Study, prior: list[FrozenTrial]):
        self._study, self._prior = study, prior

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        own = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return own + [t for t in self._prior if states is None or t.state in states]


class EnergyAwareTPE(optuna.samplers.TPESampler):
    """Multivariate TPE that ranks candidates by expected improvement per predicted joule, and
    that may learn from earlier studies' trials (a warm start).

    Cost: TPE draws ``n_ei_candidates`` joint candidates from the good trials' density l(x) and
    keeps the one with the largest log l(x) - log g(x) (its expected-improvement proxy). Here that
    score is lowered by alpha x log(predicted cost): EI per joule (Snoek et al. 2012, "EI per
    second"), the cost weight cooled from 1 to 0 as the energy budget is spent (Lee et al. 2020,
    CArBO), so cheap candidates come first and the search is free to pay for quality late.
    Prior: the warm start's trials join the study's own wherever TPE reads them (start-up count,
    the good/poor split, both densities); they are never written to the study.
    Relies on TPESampler._sample_relative/_sample/_compute_acquisition_func (Optuna 4-5; pyproject
    bounds it below 6, and tests/test_search_policy.py fails if the hooks stop being called)."""

    def __init__(self, *args: Any, cost: SamplingCost | None = None, prior: PriorTrials | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._cost, self._prior = cost, prior
        self._context: tuple[optuna.Study, dict[str, Any]] | None = None
        self.last_weighing: dict[str, Any] | None = None  # what the latest proposal was weighed with

    def _sample_relative(self, study: Any, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        prior = self._prior(study) if self._prior else []
        self._context = (study, search_space)
        try:
            return super()._sample_relative(_WithPrior(study, prior) if prior else study, trial, search_space)
        finally:
            self._context = None

    def _compute_acquisition_func(self, samples: dict[str, Any], mpe_below: Any, mpe_above: Any) -> Any:
        scores = super()._compute_acquisition_func(samples, mpe_below, mpe_above)
        context = self._context
        cost = self._cost(context[0]) if context and self._cost else None
        if context is None or cost is None or not samples:
            return scores
        space = context[1]
        n = len(next(iter(samples.values())))
        candidates = [{name: space[name].to_external_repr(samples[name][i]) for name in samples} for i in range(n)]
        predicted = np.array([cost.cost(c) for c in candidates])
        weighed = scores - cost.alpha * np.log(np.maximum(predicted, 1e-9))
        # candidates predicted dominated are not proposed (unless all are: the objective then refuses to run it)
        dominated = np.array([cost.dominated(c) for c in candidates]) if cost.dominated else np.zeros(n, bool)
        if not dominated.all():
            weighed = np.where(dominated, -np.inf, weighed)
        self.last_weighing = {"alpha": cost.alpha, "candidates": n, "left_out_dominated": int(dominated.sum()),
                              "cheapest_j": float(predicted.min()), "dearest_j": float(predicted.max()),
                              "chosen_j": float(predicted[int(np.argmax(weighed))]),
                              "unweighed_choice_j": float(predicted[int(np.argmax(scores))])}
        return weighed


def _sampler(exp: Experiment, seed: int | None = None, baseline_j: float | None = None,
             cost: SamplingCost | None = None, prior: PriorTrials | None = None) -> optuna.samplers.BaseSampler:
    seed = exp.seed if seed is None else seed
    startup = min(10, max(4, expected_trials(exp, baseline_j) // 3))  # sized by the budget that binds
    if exp.sampler == "tpe":
        # Few trials: start modelling early (default 10 random starts would be most of the budget).
        if (exp.cost_aware and cost is not None) or prior is not None:
            return EnergyAwareTPE(seed=seed, multivariate=True, n_startup_trials=startup,
                                  cost=cost if exp.cost_aware else None, prior=prior)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)
    if exp.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, exp.trials // 2)))
    if exp.sampler == "gp":  # Gaussian process, log expected hypervolume improvement (needs scipy and torch)
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup,
                                         warn_independent_sampling=False)
    if exp.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler(_grid(exp), seed=seed)


def _grid(exp: Experiment) -> dict[str, list[Any]]:
    grid = {}
    for s in exp.searched_knobs:
        sp = s.space
        assert sp is not None
        if sp.choices is not None:
            grid[s.name] = list(sp.choices)
        elif sp.integer:
            grid[s.name] = list(range(int(sp.low or 0), int(sp.high or 0) + 1, int(sp.step or 1)))
        elif sp.step:
            n = int(round(((sp.high or 0) - (sp.low or 0)) / sp.step))
            grid[s.name] = [(sp.low or 0) + i * sp.step for i in range(n + 1)]
        else:
            raise ConfigError(f"knobs.{s.name}", "the grid sampler needs choices or a step for a float range")
    return grid


# -- the study ---------------------------------------------------------------------------------
def _fingerprint(exp: Experiment) -> dict[str, Any]:
    """What must not change for a study to continue: the baseline and what is measured."""
    return {
        "pipeline": exp.pipeline,
        "pipeline_options": exp.pipeline_options,
        "baseline": exp.baseline_values(),
        "objectives": [exp.objectives.energy_scope, exp.objectives.quality_metric, exp.objectives.quality_direction],
    }


def open_study(exp: Experiment, create: bool = True, heartbeat_s: float = HEARTBEAT_S,
               grace_s: float = GRACE_S) -> optuna.Study:
    storage = make_storage(exp.storage, heartbeat_s, grace_s)
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


def source_study(exp: Experiment, name: str) -> tuple[dict[str, Any], list[FrozenTrial]]:
    """An earlier study in the experiment's storage (a warm start's source): its attributes and the
    completed trials that ran (not duplicates answered from another trial)."""
    try:
        source = optuna.load_study(study_name=name, storage=make_storage(exp.storage))
    except KeyError:
        raise GreenknobsError(f"warm_start: no study {name!r} in {mask_password(exp.storage)} (run it first, or "
                              "name a study that exists there)") from None
    done = [t for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and len(t.values) > 1 and t.user_attrs.get("duplicate_of") is None and t.user_attrs.get("knob_values")]
    return dict(source.user_attrs), done


def rescaled(trial: FrozenTrial, energy_scale: float, quality_scale: float, source: str) -> FrozenTrial:
    """A source study's trial on this study's scale: its objectives multiplied by the ratio of the
    two baselines (energy effects compound multiplicatively, so they carry across data sizes)."""
    return optuna.trial.create_trial(
        params=trial.params, distributions=trial.distributions,
        values=[trial.values[0] * energy_scale, trial.values[1] * quality_scale],
        user_attrs={"knob_values": trial.user_attrs["knob_values"], "warm_from": f"{source}#{trial.number}"},
        system_attrs=dict(trial.system_attrs))


def suggest(trial: Trial, setting: KnobSetting) -> Any:
    sp = setting.space
    assert sp is not None
    if sp.choices is not None:
        return trial.suggest_categorical(setting.name, list(sp.choices))
    if sp.integer:
        return trial.suggest_int(setting.name, int(sp.low or 0), int(sp.high or 0), step=int(sp.step or 1), log=sp.log)
    return trial.suggest_float(setting.name, float(sp.low or 0), float(sp.high or 0), step=sp.step, log=sp.log)


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("baseline"):
            return t
    return None


def ensure_baseline_queued(study: optuna.Study, exp: Experiment, user_attrs: dict[str, Any] | None = None) -> None:
    """Enqueue the all-defaults trial unless the baseline already ran or is waiting."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)):
        if t.user_attrs.get("baseline"):
            return
    study.enqueue_trial({s.name: s.default for s in exp.searched_knobs}, user_attrs={"baseline": True, **(user_attrs or {})},
                        skip_if_exists=False)


def enqueue(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
    study.enqueue_trial(params, user_attrs=user_attrs, skip_if_exists=False)


def tried_params(study: optuna.Study) -> set[str]:
    """The searched values of every trial in the study, queued ones included (as JSON)."""
    return {json.dumps(t.params or t.system_attrs.get("fixed_params") or {}, sort_keys=True, default=str)
            for t in study.get_trials(deepcopy=False)}


def gains_after_check(study: optuna.Study) -> list[float]:
    """For each completed trial that passed its progress check: how much its validation quality
    (objective 1) improved from the check to the end of training, signed so that better is positive."""
    gains = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        check = t.user_attrs.get("progress_check")
        if check and not check.get("hopeless") and t.values and len(t.values) > 1:
            sign = 1.0 if check.get("direction", "maximize") == "maximize" else -1.0
            gains.append(sign * (t.values[1] - check["validation_quality"]))
    return gains


def rung_records(study: optuna.Study, rung: str) -> list[tuple[float, float, float]]:
    """For each completed trial scored at ``rung``: (its validation quality there, its final
    validation quality, its objective energy) -- signed so that higher quality is better."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rec = (t.user_attrs.get("rungs") or {}).get(rung)
        if rec and t.values and len(t.values) > 1 and t.user_attrs.get("duplicate_of") is None:
            sign = 1.0 if rec.get("direction", "maximize") == "maximize" else -1.0
            out.append((sign * rec["quality"], sign * t.values[1], t.values[0]))
    return out


def feasible_points(study: optuna.Study) -> list[tuple[float, float]]:
    """(objective energy, validation quality) of every completed feasible trial (quality as stored)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        summary = t.user_attrs.get("summary") or {}
        if t.values and len(t.values) > 1 and summary.get("feasible"):
            out.append((t.values[0], t.values[1]))
    return out


def waiting_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def fail_dead(study: optuna.Study, gone, grace_s: float = GRACE_S) -> list[FrozenTrial]:
    """Fail RUNNING trials whose worker died: silent longer than the grace period (Optuna's stale
    check), or -- at once -- recorded by a worker of this host that no longer exists (``gone``).
    Also a trial that never got a worker's name or a heartbeat within the grace period: started by
    a call whose answer a database outage lost (the worker had asked, and asked again)."""
    storage = study._storage
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    before = {t.number for t in running}
    optuna.storages.fail_stale_trials(study)
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        orphan = "worker" not in t.user_attrs and t.datetime_start is not None and \
            (now - t.datetime_start).total_seconds() > grace_s
        if orphan or gone(t.user_attrs.get("worker") or {}):
            with contextlib.suppress(Exception):  # it may have finished or been failed concurrently
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in before]


MAX_ATTEMPTS = 3  # a trial cut off this many times (its worker killed each time) is not tried again


def requeue_interrupted(study: optuna.Study, only_baseline: bool = False) -> int:
    """Re-queue, with the same knob values, trials that were cut off (Ctrl-C, a killed worker).

    Failed trials with a recorded reason failed for real and are left alone. A retry starts with
    fresh attributes: only its role in a plan is carried over, never the dead attempt's MLflow
    run or energy (the attempt keeps those: its energy still counts in the search's cost). A
    combination whose worker died ``MAX_ATTEMPTS`` times is not queued again (something about it
    kills workers: an out-of-memory kill, say)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials} | {
        RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials}
    count = 0
    for t in trials:
        if only_baseline and not t.user_attrs.get("baseline"):
            continue
        attempt = int(t.user_attrs.get("attempt", 1))
        if t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs and t.number not in retried \
                and attempt < MAX_ATTEMPTS:
            carried = {k: t.user_attrs[k] for k in ("ablation", "baseline", "variant_of") if k in t.user_attrs}  # its role
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "attempt": attempt + 1, **carried},
                                skip_if_exists=False)
            count += 1
    return count


def completed_twin(study: optuna.Study, values: dict[str, Any], number: int) -> FrozenTrial | None:
    """An earlier completed trial that ran exactly these knob values (compared as stored, in JSON)."""
    key = json.dumps(values, sort_keys=True, default=str)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != number and "summary" in t.user_attrs \
                and json.dumps(t.user_attrs.get("knob_values"), sort_keys=True, default=str) == key:
            return t
    return None


def running_twin(study: optuna.Study, values: dict[str, Any], number: int) -> FrozenTrial | None:
    """An earlier-numbered trial running these exact knob values now (another worker drew the same
    combination). Only earlier ones: two twins never wait for each other."""
    key = json.dumps(values, sort_keys=True, default=str)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number < number and json.dumps(t.user_attrs.get("knob_values"), sort_keys=True, default=str) == key:
            return t
    return None


def overhead_j(study: optuna.Study) -> float:
    """Energy spent outside trials (warm-up runs), as recorded on the study."""
    return float(sum(e.get("energy_j", 0.0) for e in study.user_attrs.get("overhead", [])))


def failed_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))


def spent_j(study: optuna.Study) -> float:
    """Every joule the study has spent: each trial's ``spent`` (complete, failed, stopped or cut
    off -- what ran counts), plus the warm-ups. Reused results count what loading them cost."""
    trials = sum(float((t.user_attrs.get("spent") or {}).get("energy_j", 0.0)) for t in study.get_trials(deepcopy=False))
    return trials + overhead_j(study)


def in_flight_j(study: optuna.Study, predict: Callable[[dict[str, Any]], float], but: int) -> float:
    """What trials running now (other than ``but``) are predicted still to spend: each one's
    predicted energy less what it has spent so far (its ``spent``, saved as it goes)."""
    total = 0.0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        values = t.user_attrs.get("knob_values")
        if t.number == but or not values:
            continue
        total += max(0.0, predict(values) - float((t.user_attrs.get("spent") or {}).get("energy_j", 0.0)))
    return total


def energy_observations(study: optuna.Study, objective: bool = True) -> list[tuple[dict[str, Any], float]]:
    """(knob values, energy) of every trial that ran to the end (not a reused duplicate): the
    objective's energy, or (``objective=False``) the trial's total attributed energy."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        values = t.user_attrs.get("knob_values")
        if not values or t.user_attrs.get("duplicate_of") is not None or not t.values:
            continue
        energy = t.values[0] if objective else (t.user_attrs.get("result") or {}).get("energy_j")
        if energy:
            out.append((values, float(energy)))
    return out


def recorded_fingerprint(study: optuna.Study) -> dict[str, Any] | None:
    """What the study's results were produced from: an accepted change's fingerprint, else the
    latest completed trial's (its data and model digests, code digest, library versions)."""
    if study.user_attrs.get("produced_from"):
        return study.user_attrs["produced_from"]
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("produced_from")]
    return max(done, key=lambda t: t.number).user_attrs["produced_from"] if done else None


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)))


def budget_used(study: optuna.Study) -> int:
    """Trials that count against the study's total budget: completed, pruned, failed for a reason,
    and running (a trial cut off by a dead worker stops counting when it is failed and its retry
    starts counting when it runs)."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) or (
                t.state == TrialState.FAIL and "fail_reason" in t.user_attrs):
            n += 1
    return n


def baseline_state(study: optuna.Study) -> str:
    """"complete", "running", "waiting", "failed" or "none" for the study's baseline trial."""
    states = [t.state for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")]
    for state, name in ((TrialState.COMPLETE, "complete"), (TrialState.RUNNING, "running"),
                        (TrialState.WAITING, "waiting"), (TrialState.FAIL, "failed")):
        if state in states:
            return name
    return "none"


def ask(study: optuna.Study) -> Trial:
    # our own loop heartbeats its trials (coordination.Heartbeat); Optuna warns that only optimize() does
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


def tell(study: optuna.Study, trial: Trial, values: tuple[float, float] | None, pruned: bool = False) -> None:
    """Record a trial's outcome: its objective values, PRUNED (stopped on purpose), or FAIL."""
    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
    elif values is None:
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, list(values))


def note_progress(trial: Trial, key: str, value: Any) -> bool:
    """Record an attribute of a running trial if the database answers now; during an outage the
    trial goes on without waiting (its outcome carries the value). False when it was skipped."""
    try:
        with DATABASE.at_once():
            trial.set_user_attr(key, value)
        return True
    except ServiceOutage:
        return False


def record_outcome(study: optuna.Study, trial: Trial | int, state: str, values: tuple[float, ...] | list[float] | None,
                   attrs: dict[str, Any], constraints: dict[str, float]) -> str | None:
    """Write a trial's outcome: attributes, constraints, then its state (complete, pruned, fail) and
    values. ``trial`` is the running trial, or the number of one whose outcome a worker kept on disk
    because the database was gone when it ended. Every write is an upsert, so writing an outcome
    again is harmless. None when recorded; else why it could not be (a kept outcome whose trial was
    meanwhile failed as the trial of a dead worker: its retry is queued)."""
    if isinstance(trial, int):
        trial = Trial(study, study._storage.get_trial_id_from_study_id_trial_number(study._study_id, trial))
        why = _not_running(study, trial, state)
        if why is not None or _recorded(study, trial, state):
            return why
    try:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        with warnings.catch_warnings():  # a constraint set before is kept (Optuna warns and ignores)
            warnings.simplefilter("ignore")
            for name, value in constraints.items():
                trial.set_constraint(name, value)
        tell(study, trial, (values[0], values[1]) if values else None, pruned=state == "pruned")
    except (UpdateFinishedTrialError, ValueError):  # finished meanwhile: failed by a janitor after a long outage
        why = _not_running(study, trial, state)
        if why is None:
            raise
        return why
    return None


def _recorded(study: optuna.Study, trial: Trial, state: str) -> bool:
    return study._storage.get_trial(trial._trial_id).state.name.lower() == state


def _not_running(study: optuna.Study, trial: Trial, state: str) -> str | None:
    """None while the trial runs (or already has this outcome: a call whose answer was lost);
    else why its outcome cannot be written any more."""
    current = study._storage.get_trial(trial._trial_id)
    if current.state == TrialState.RUNNING or current.state.name.lower() == state:
        return None
    return f"trial {current.number} is {current.state.name} by now (its worker was taken for dead; its retry is queued)"


def record_run_ids(study: optuna.Study, run_ids: dict[str, str]) -> None:
    """The MLflow run ids that replaced placeholders (runs created while the tracking server was
    unreachable): a trial's ``mlflow_run_id`` attribute can no longer change once it finished."""
    for placeholder, run_id in run_ids.items():
        study.set_user_attr(f"{RUN_ALIAS}{placeholder}", run_id)


def run_aliases(study: optuna.Study) -> dict[str, str]:
    return {k[len(RUN_ALIAS):]: v for k, v in study.user_attrs.items() if k.startswith(RUN_ALIAS)}


RUN_ALIAS = "mlflow_run:"


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The feasible Pareto front as Optuna computes it, ordered by energy."""
    return sorted(study.best_trials, key=lambda t: t.values[0])


def importances(study: optuna.Study) -> dict[str, dict[str, float]]:
    """Knob importance per objective (Optuna's default evaluator, PED-ANOVA in Optuna 5), over the
    completed trials. Importance has no sign: it says how much a knob moved an objective, not which way.
    Empty when there is too little to judge (fewer than two completed trials, or nothing varied)."""
    out: dict[str, dict[str, float]] = {}
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 3 or len({json.dumps(t.params, sort_keys=True, default=str) for t in done}) < 2:
        return out
    # PED-ANOVA asks what makes the target *low*: a maximised quality is negated
    signs = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in study.directions]
    for i, name in enumerate(("energy", "quality")):
        try:
            out[name] = {k: float(v) for k, v in optuna.importance.get_param_importances(
                study, target=lambda t, i=i: signs[i] * t.values[i]).items()}
        except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. a parameter that never varied
            out[name] = {}
    return out


def name_objectives(study: optuna.Study, exp: Experiment) -> None:
    """Objective names Optuna Dashboard shows (instead of 'values_0', 'values_1')."""
    names = [f"energy_j ({exp.objectives.energy_scope})", f"{exp.objectives.quality_metric} (validation)"]
    if getattr(study, "metric_names", None) != names:
        study.set_metric_names(names)
