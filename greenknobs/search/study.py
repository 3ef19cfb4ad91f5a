"""The Optuna study behind a search: storage, sampler, the baseline, re-queued trials, the front.
The only module importing optuna; the rest of greenknobs talks to studies through it.

Trial 0 is the baseline (every knob at its default), enqueued once per study. Objectives:
minimise energy (J, over the experiment's scope) and maximise/minimise the quality metric.
Everything a later step needs is stored in the trial's user attributes, so the study in its
storage is the record: nothing lives only in this process.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, Trial, TrialState

from greenknobs.config import Experiment
from greenknobs.errors import ConfigError, GreenknobsError
from greenknobs.knobs.base import KnobSetting

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and the retry callback are marked experimental; they are what makes dead workers recoverable.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_S = 30  # a worker that stops beating for GRACE_S has died: its trial is failed and re-queued
GRACE_S = 90

Study = optuna.Study
__all__ = ["Study", "Trial", "FrozenTrial", "TrialState", "TrialPruned", "make_storage", "mask_password",
           "open_study", "suggest", "baseline_trial", "ensure_baseline_queued", "requeue_interrupted",
           "front_trials", "finished_count", "completed_twin"]
TrialPruned = optuna.TrialPruned


# -- storage ---------------------------------------------------------------------------------
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


# -- sampler -----------------------------------------------------------------------------------
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


def ensure_baseline_queued(study: optuna.Study, exp: Experiment) -> None:
    """Enqueue the all-defaults trial unless the baseline already ran or is waiting."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)):
        if t.user_attrs.get("baseline"):
            return
    study.enqueue_trial({s.name: s.default for s in exp.searched_knobs}, user_attrs={"baseline": True},
                        skip_if_exists=False)


def requeue_interrupted(study: optuna.Study) -> int:
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
        # The baseline is re-queued by ensure_baseline_queued; re-queuing it here would run it twice.
        if t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs and t.number not in retried \
                and "retry_of" not in t.user_attrs and not t.user_attrs.get("baseline"):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
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


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)))


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The feasible Pareto front as Optuna computes it, ordered by energy."""
    return sorted(study.best_trials, key=lambda t: t.values[0])
