"""The search's small policies, each one decision the objective asks for:

* ``HopelessStop`` -- the progress check handed to the training loop: stop a trial still at the
  trivial model's level, or too far below the quality floor to reach it (HopelessTrial).
* ``InferenceVariants`` -- after a model is trained (and stored), queue trials that serve it with
  other values of the searched inference knobs: they cost only their inference phase.
* ``TwinReuse`` -- a trial whose canonical knob values equal a completed trial's takes its result;
  one equal to a trial running in another worker waits for it rather than spend the energy twice.
* ``FailureStreak`` -- the same unexpected error several trials in a row is a bug, not a bad knob
  value: it stops the search.

They read and write the study they are given; none of them runs a trial or talks to MLflow.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from typing import Any

from greenknobs.config import Experiment
from greenknobs.errors import HopelessTrial
from greenknobs.search import study as studies
from greenknobs.search.coordination import wait
from greenknobs.search.figures import trivial_bar
from greenknobs.search.progress import Reporter
from greenknobs.search.study import FrozenTrial, Study, Trial

ProgressCheck = Callable[[float, Callable[[], float]], None]

SAME_ERROR_LIMIT = 3  # the same unexpected error this many trials in a row stops the search
# a trial stopped for being below the floor must be short of it by more than REACH_SAFETY x the
# largest gain (check -> end of training) seen in at least REACH_MIN_TRIALS completed trials
REACH_SAFETY = 1.5
REACH_MIN_TRIALS = 3


class HopelessStop:
    """``stop_hopeless``: once, at ``at_fraction`` of the planned training steps, score validation;
    at the trivial model's level, or too far below the floor to reach it, stop the trial."""

    def __init__(self, exp: Experiment):
        self.exp = exp

    def check_for(self, study: Study, trial: Trial) -> ProgressCheck | None:
        """The check for one trial, or None where it cannot judge (disabled, no baseline or no
        trivial score yet, or floors that do not lie above the trivial level)."""
        exp = self.exp
        if not exp.stop_hopeless.enabled:
            return None
        base = studies.baseline_trial(study)
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
        gains = studies.gains_after_check(study) if exp.stop_hopeless.below_floor and floor is not None else []
        reach = max(max(gains), 0.0) * REACH_SAFETY if len(gains) >= REACH_MIN_TRIALS else None
        state = {"done": False}

        def check(fraction: float, validate: Callable[[], float]) -> None:
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


class InferenceVariants:
    """``reuse.inference_variants``: a model just trained (and stored) is served with other values of
    the searched inference knobs -- drawn from every combination of their choices the study has not
    tried -- each variant costing only its inference phase."""

    def __init__(self, exp: Experiment, reporter: Reporter | None):
        self.exp, self.reporter = exp, reporter

    def queue(self, study: Study, trial: Trial) -> None:
        exp = self.exp
        inference = [s for s in exp.searched_knobs if s.knob.phase == "inference" and s.space and s.space.choices]
        # only as many as the trial budget still has room for (a queued trial left over would run next time)
        room = exp.trials - studies.budget_used(study) - studies.waiting_count(study)
        wanted = max(0, min(exp.reuse.inference_variants, room))
        if not inference or not wanted:
            return
        params = {s.name: trial.params[s.name] for s in exp.searched_knobs if s.name in trial.params}
        tried = studies.tried_params(study)
        variants = []
        for combo in itertools.product(*(s.space.choices for s in inference if s.space and s.space.choices)):
            variant = {**params, **{s.name: v for s, v in zip(inference, combo)}}
            if json.dumps(variant, sort_keys=True, default=str) not in tried:
                variants.append(variant)
        random.Random(exp.seed * 7919 + trial.number).shuffle(variants)
        for variant in variants[:wanted]:
            studies.enqueue(study, variant, {"variant_of": trial.number})
            if self.reporter:
                changed = ", ".join(f"{s.name}={variant[s.name]}" for s in inference if variant[s.name] != params.get(s.name))
                self.reporter.note(trial.number, f"queued a variant on its trained model: {changed}")


class TwinReuse:
    """Exact duplicates (after canonicalisation) are not run again."""

    def __init__(self, reporter: Reporter | None):
        self.reporter = reporter

    def find(self, study: Study, trial: Trial, values: dict[str, Any]) -> FrozenTrial | None:
        """A completed trial with these knob values; if another worker is running them right now,
        wait for its result rather than spend the energy twice."""
        announced = False
        while (running := studies.running_twin(study, values, trial.number)) is not None:
            if self.reporter and not announced:
                self.reporter.note(trial.number, f"same knob values as trial {running.number}, running in another "
                                                 "worker: waiting for its result")
                announced = True
            wait(1.0)
        return studies.completed_twin(study, values, trial.number)

    @staticmethod
    def adopt(twin: FrozenTrial) -> tuple[tuple[float, float], dict[str, Any], dict[str, float]]:
        """What a duplicate takes from its twin: the objective values, the attributes (its result,
        marked ``duplicate_of``, nothing spent) and the constraints."""
        attrs = {key: twin.user_attrs[key] for key in ("result", "summary")}
        attrs.update(duplicate_of=twin.number, spent={"energy_j": 0.0, "phases": {}, "provenance": "none (result reused)"})
        return (twin.values[0], twin.values[1]), attrs, dict(twin.user_attrs["summary"].get("constraints", {}))


class FailureStreak:
    """Counts consecutive failures with the same error; ``abort`` says why the search must stop."""

    def __init__(self, limit: int = SAME_ERROR_LIMIT):
        self.limit = limit
        self.abort: str | None = None
        self._streak: tuple[tuple[str, str], int] | None = None  # (error signature, consecutive count)

    def succeeded(self) -> None:
        self._streak = None

    def failed(self, exc: BaseException, reason: str, trial_number: int) -> None:
        signature = (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        count = self._streak[1] + 1 if self._streak and self._streak[0] == signature else 1
        self._streak = (signature, count)
        if count >= self.limit:
            self.abort = (f"the same error ended {count} trials in a row ({reason}); that is a bug, not a bad "
                          f"knob value -- the search stops here. The traceback is in the MLflow run of trial "
                          f"{trial_number} (artifact traceback.txt)")
