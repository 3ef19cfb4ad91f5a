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


def predicted_dominated(energy: float, error: float, most_accurate_energy: float) -> bool:
    """A candidate predicted to cost more, even less the energy model's error, than the most accurate
    feasible trial: it could reach the front only by out-scoring every trial so far. One rule for
    the sampler (left out of its proposals) and the pre-start check (not started)."""
    return energy * (1.0 - error) > most_accurate_energy


class HopelessStop:
    """``stop_hopeless``: score validation partway through training and stop a trial that cannot
    end on the front -- at ``at_fraction`` one still at the trivial model's level or too far below
    the quality floor to reach it; at every rung (``rungs``, multi-objective successive halving) one
    that, even with the largest gain completed trials made from that rung to the end (x1.5), would
    be dominated by a completed feasible trial no costlier than its predicted energy."""

    def __init__(self, exp: Experiment):
        self.exp = exp

    def check_for(self, study: Study, trial: Trial,
                  predict: Callable[[], tuple[float, float] | None] | None = None) -> ProgressCheck | None:
        """The check for one trial, or None where it cannot judge (disabled, no baseline or no
        trivial score yet, or floors that do not lie above the trivial level). ``predict()``: the
        trial's predicted objective energy and the energy model's median error (None: no model)."""
        exp = self.exp
        if not exp.stop_hopeless.enabled:
            return None
        base = studies.baseline_trial(study)
        trivial = (base.user_attrs.get("summary") or {}).get("trivial_quality") if base else None
        if trivial is None:
            return None
        maximize = exp.objectives.quality_direction == "maximize"
        sign = 1.0 if maximize else -1.0
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
        fractions = sorted({*exp.stop_hopeless.rungs, exp.stop_hopeless.at_fraction})
        state = {"next": 0}
        metric = exp.objectives.quality_metric

        def check(fraction: float, validate: Callable[[], float]) -> None:
            while state["next"] < len(fractions) and fraction >= fractions[state["next"]]:
                at = fractions[state["next"]]
                state["next"] += 1
                score = validate()  # the task's validation score, higher is better (perplexity comes negated)
                quality = score if maximize else -score
                rungs = dict(trial.user_attrs.get("rungs") or {})
                rungs[_key(at)] = {"quality": quality, "direction": exp.objectives.quality_direction}
                trial.set_user_attr("rungs", rungs)
                if at == exp.stop_hopeless.at_fraction:
                    self._floor_check(trial, fraction, quality, bar, floor, reach, len(gains))
                if at in exp.stop_hopeless.rungs and predict is not None:
                    self._rung_check(study, trial, at, quality, sign, predict, metric)

        return check

    def most_accurate(self, study: Study) -> tuple[float, float] | None:
        """(objective energy, validation quality) of the most accurate feasible trial (the cheapest
        among ties): what a candidate must undercut to have a place on the front. None while the
        dominance check is off or fewer than three feasible trials have finished."""
        exp = self.exp
        if not (exp.stop_hopeless.enabled and exp.stop_hopeless.before_start):
            return None
        points = studies.feasible_points(study)
        if len(points) < REACH_MIN_TRIALS:
            return None
        sign = 1.0 if exp.objectives.quality_direction == "maximize" else -1.0
        return max(points, key=lambda p: (sign * p[1], -p[0]))

    def dominated_at_start(self, study: Study, predict: Callable[[], tuple[float, float] | None]) -> str | None:
        """Why a candidate need not run (``before_start``): its predicted energy, less the energy
        model's error, is above that of the most accurate feasible trial, so it could reach the front
        only by scoring better than every trial so far (the baseline included). The sampler already
        leaves such candidates out (EnergyAwareTPE); this catches what it could not (every
        candidate dominated, random start-up proposals). Told PRUNED, so TPE counts its region among
        the poor ones. None: it runs (also with no model or too few feasible trials yet)."""
        top = self.most_accurate(study)
        predicted = predict() if top is not None else None
        if top is None or predicted is None:
            return None
        energy, error = predicted
        top_e, top_q = top
        if not predicted_dominated(energy, error, top_e):
            return None
        return (f"not started: its predicted energy, {energy:,.0f} J (less the energy model's {error:.0%} error: "
                f"{energy * (1.0 - error):,.0f} J), is above the {top_e:,.0f} J of the most accurate feasible "
                f"trial (validation {self.exp.objectives.quality_metric} {top_q:.4f}); it could reach the front only "
                "by scoring above every trial so far")

    def _floor_check(self, trial: Trial, fraction: float, quality: float, bar: float, floor: float | None,
                     reach: float | None, from_trials: int) -> None:
        exp = self.exp
        maximize = exp.objectives.quality_direction == "maximize"
        trivial_level = quality <= bar if maximize else quality >= bar
        short = reach is not None and floor is not None and (
            quality + reach < floor if maximize else quality - reach > floor)
        trial.set_user_attr("progress_check", {
            "fraction": round(fraction, 3), "validation_quality": quality, "trivial_bar": bar,
            "direction": exp.objectives.quality_direction, "floor": floor, "reach": reach,
            "reach_from_trials": from_trials, "hopeless": trivial_level or short})
        metric = exp.objectives.quality_metric
        if trivial_level:
            raise HopelessTrial(f"after {fraction:.0%} of training, validation {metric} {quality:.4f} is still at "
                                f"the trivial model's level ({bar:.4f}): it cannot meet the quality floor, so "
                                "the trial stops here")
        if short and reach is not None:
            raise HopelessTrial(f"after {fraction:.0%} of training, validation {metric} {quality:.4f} is too far "
                                f"from the floor ({floor:.4f}) to reach it: the {from_trials} completed trials "
                                f"gained at most {reach / REACH_SAFETY:.4f} over the rest of training (allowed "
                                f"{reach:.4f}), so the trial stops here")

    def _rung_check(self, study: Study, trial: Trial, at: float, quality: float, sign: float,
                    predict: Callable[[], tuple[float, float] | None], metric: str) -> None:
        """Successive halving on two objectives: stop a trial that cannot reach the front from here."""
        records = studies.rung_records(study, _key(at))
        predicted = predict()
        if len(records) < REACH_MIN_TRIALS or predicted is None:
            return  # too few completed trials passed this rung, or no energy model yet: it runs on
        energy, error = predicted
        gain = max(max(final - there for there, final, _ in records), 0.0) * REACH_SAFETY
        best_case = sign * quality + gain  # the most this trial can still reach, signed so higher is better
        cheaper = energy * (1.0 - error)  # what it costs at the least, by the model's own error
        beaten = [(e, q) for e, q in studies.feasible_points(study) if e <= cheaper and sign * q > best_case]
        rungs = dict(trial.user_attrs.get("rungs") or {})
        rungs[_key(at)].update(predicted_energy_j=energy, model_error=error, best_case=sign * best_case,
                               dominated_by=len(beaten))
        trial.set_user_attr("rungs", rungs)
        if beaten:
            e, q = min(beaten)
            raise HopelessTrial(f"after {at:.0%} of training (successive halving), validation {metric} {quality:.4f} "
                                f"can reach at most {sign * best_case:.4f} (the largest gain {len(records)} completed "
                                f"trials made from here, x{REACH_SAFETY}), and a completed trial at {e:.0f} J scored "
                                f"{q:.4f} -- cheaper than this trial's predicted {energy:.0f} J (less the energy "
                                f"model's {error:.0%} error) and better: it cannot reach the front, so it stops here")


def _key(fraction: float) -> str:
    return f"{fraction:.3f}"


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
