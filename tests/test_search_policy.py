"""The search's newer policies: a predicted-energy model fitted on the study's trials, the energy
budget kept as a promise (a trial predicted to cross it does not start), and successive halving on
two objectives (a trial that cannot reach the front from a rung stops there)."""

from __future__ import annotations

import math
import random

from greenknobs.config import parse_experiment
from greenknobs.errors import HopelessTrial
from greenknobs.search import energy_model
from greenknobs.search import study as studies
from greenknobs.search.policies import HopelessStop


def experiment(tmp_path, **extra):
    raw = {"name": "policy", "pipeline": {"name": "greenknobs.testing.standin:SleepPipeline", "phase_s": 0.0},
           "knobs": {"standin.width": {"class": "greenknobs.testing.standin:Width", "choices": [1, 2, 3, 4]},
                     "standin.depth": {"class": "greenknobs.testing.standin:Depth", "default": 8, "low": 1, "high": 8}},
           "constraints": {"min_quality_retained": 0.5, "beat_trivial_by": 0.05},
           "storage": f"sqlite:///{tmp_path}/optuna.db", "mlflow_uri": f"sqlite:///{tmp_path}/mlflow.db", **extra}
    return parse_experiment(raw, str(tmp_path / "policy.yaml"))


def study_with_baseline(exp):
    """A study whose baseline completed at 400 J and quality 0.95 (trivial model: 0.1)."""
    study = studies.open_study(exp)
    baseline = studies.ask(study)
    baseline.set_user_attr("baseline", True)
    baseline.set_user_attr("summary", {"trivial_quality": 0.1, "feasible": True})
    studies.tell(study, baseline, (400.0, 0.95))
    return study


def test_the_energy_model_learns_a_multiplicative_cost_and_says_how_wrong_it_is(tmp_path):
    exp = experiment(tmp_path)
    rng = random.Random(0)
    truth = lambda v: 50.0 * v["standin.width"] ** 0.9 * v["standin.depth"]  # cost multiplies across knobs
    seen = []
    for _ in range(12):
        v = {"standin.width": rng.choice([1, 2, 3, 4]), "standin.depth": rng.randint(1, 8)}
        seen.append((v, truth(v) * rng.uniform(0.95, 1.05)))  # ~5 % measurement noise
    assert energy_model.fit(exp, seen[:3]) is None  # too few trials: nothing is decided on it
    model = energy_model.fit(exp, seen)
    assert model is not None and model.loo_median_error < 0.10
    unseen = {"standin.width": 3, "standin.depth": 5}
    assert math.isclose(model.predict(unseen), truth(unseen), rel_tol=0.15)
    assert "leave-one-out error median" in model.describe()


def test_a_trial_that_cannot_reach_the_front_from_a_rung_stops_there(tmp_path):
    """Three completed trials gained at most 0.05 from the 25 % rung to the end; a completed feasible
    trial costs 100 J at quality 0.90. A new trial predicted at 200 J that scores 0.70 at the rung
    can reach at most 0.70 + 1.5 x 0.05 = 0.775 < 0.90: dominated, it stops. One scoring 0.86 can
    still reach 0.935 > 0.90: it runs on; so does any trial while there is no energy model."""
    exp = experiment(tmp_path)
    study = study_with_baseline(exp)
    for energy, there, final in ((100.0, 0.86, 0.90), (150.0, 0.80, 0.85), (300.0, 0.70, 0.72)):
        t = studies.ask(study)
        t.set_user_attr("rungs", {"0.250": {"quality": there, "direction": "maximize"}})
        t.set_user_attr("summary", {"feasible": True})
        studies.tell(study, t, (energy, final))
    policy = HopelessStop(exp)
    verdicts = {}
    for label, rung_quality, predicted in (("weak", 0.70, (200.0, 0.1)), ("promising", 0.86, (200.0, 0.1)),
                                           ("no model", 0.70, None)):
        trial = studies.ask(study)
        check = policy.check_for(study, trial, lambda p=predicted: p)
        try:
            check(0.25, lambda q=rung_quality: q)
            verdicts[label] = "runs on"
        except HopelessTrial as exc:
            verdicts[label] = str(exc)
        studies.tell(study, trial, None)
    assert "successive halving" in verdicts["weak"] and "can reach at most 0.7750" in verdicts["weak"]
    assert verdicts["promising"] == "runs on" and verdicts["no model"] == "runs on"


def test_a_trial_predicted_to_cross_the_energy_budget_does_not_start(tmp_path, monkeypatch):
    """The stand-in pipeline sleeps in training for width x depth units, measured by a wall-clock meter:
    a trial's energy follows its knob values. Once the model has four trials, a trial whose predicted
    energy would cross what is left of the budget is refused before it starts, the search stops saying
    so, and what was spent stays within the budget (the overshoot is at most the model's error)."""
    import sys

    from greenknobs.search import Search
    from greenknobs.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    exp = experiment(tmp_path, budget={"trials": 40, "energy_j": 25}, sampler="random", reuse=False,
                     meter={"name": "user_meters:WallClockMeter", "params": {"watts": 10.0}},
                     pipeline={"name": "greenknobs.testing.standin:SleepPipeline", "phase_s": 0.01,
                               "training_s_per_unit": 0.01}, stop_hopeless={"enabled": False})
    tracker = Tracker(exp.mlflow_uri, exp.name)
    try:
        outcome = Search(exp, tracker).run()
    finally:
        tracker.end_study()
    refused = [t for t in outcome.study.trials if t.user_attrs.get("not_started")]
    spent = studies.spent_j(outcome.study)
    assert len(refused) == 1 and "would cross the energy budget" in refused[0].user_attrs["stop_reason"]
    assert "the next trial was not started" in outcome.stopped_by and refused[0].user_attrs["spent"]["energy_j"] == 0.0
    assert spent <= 25 * 1.1, (spent, outcome.stopped_by)
    assert "user_meters" in sys.modules


def test_a_candidate_predicted_dearer_than_the_most_accurate_trial_is_not_started(tmp_path):
    """The most accurate feasible trial is the baseline (400 J, 0.95). A candidate predicted at 500 J
    (10 % model error: at least 450 J) could reach the front only by beating 0.95: not started, with
    the figures. One predicted at 420 J (at least 378 J) may undercut it: it runs; so does any
    candidate without a model, or with ``before_start: false``."""
    exp = experiment(tmp_path)
    study = study_with_baseline(exp)
    policy = HopelessStop(exp)
    assert policy.dominated_at_start(study, lambda: (500.0, 0.1)) is None  # one feasible trial: too few to judge
    for energy, quality in ((100.0, 0.90), (150.0, 0.85)):
        t = studies.ask(study)
        t.set_user_attr("summary", {"feasible": True})
        studies.tell(study, t, (energy, quality))
    skip = policy.dominated_at_start(study, lambda: (500.0, 0.1))
    assert skip is not None and "500 J" in skip and "450 J" in skip and "400 J" in skip and "0.9500" in skip
    assert policy.dominated_at_start(study, lambda: (420.0, 0.1)) is None
    assert policy.dominated_at_start(study, lambda: None) is None
    off = HopelessStop(experiment(tmp_path, stop_hopeless={"before_start": False}))
    assert off.dominated_at_start(study, lambda: (500.0, 0.1)) is None


def test_the_cost_aware_sampler_proposes_cheaper_candidates_by_expected_improvement_per_joule(tmp_path):
    """Cost grows with width x depth, and so does quality. With the same seed and the same trials
    told, TPE weighing its candidates by predicted cost picks, every time, a candidate no dearer than
    plain TPE's own choice among the same candidates (recorded on the sampler), and strictly cheaper
    ones on the whole; with the cost weight cooled to 0 it proposes what plain TPE proposes."""
    exp = experiment(tmp_path, budget={"trials": 30})
    cost = lambda v: 10.0 * v["standin.width"] * v["standin.depth"]

    def run(weight: float | None, dominated=None) -> tuple[list[float], list[dict]]:
        study = studies.open_study(experiment(tmp_path / f"w{weight}{dominated is not None}", budget={"trials": 30}))
        study.sampler = studies._sampler(exp, 0, None, cost=None if weight is None else (
            lambda s: studies.Weighing(cost, weight, dominated)))
        costs, weighings = [], []
        for _ in range(24):
            t = studies.ask(study)
            v = {s.name: studies.suggest(t, s) for s in exp.searched_knobs}
            if getattr(study.sampler, "last_weighing", None):
                weighings.append(study.sampler.last_weighing)
                study.sampler.last_weighing = None
            studies.tell(study, t, (cost(v), v["standin.width"] * v["standin.depth"] / 32))
            costs.append(cost(v))
        return costs, weighings

    for name in ("wNoneFalse", "w1.0False", "w0.0False", "w0.0True"):
        (tmp_path / name).mkdir()
    plain, _ = run(None)
    aware, weighings = run(1.0)
    cooled, _ = run(0.0)
    startup = len(plain) - len(weighings)
    assert weighings and all(w["chosen_j"] <= w["unweighed_choice_j"] for w in weighings)
    assert any(w["chosen_j"] < w["unweighed_choice_j"] for w in weighings)
    assert sum(aware[startup:]) < sum(plain[startup:])
    assert cooled == plain
    # candidates predicted dominated (here: dearer than 120 J) are left out of every model-based proposal
    bounded, weighings = run(0.0, dominated=lambda v: cost(v) > 120)
    assert any(w["left_out_dominated"] for w in weighings) and max(bounded[startup:]) <= 120 < max(plain[startup:])


def _search(exp):
    from greenknobs.search import Search
    from greenknobs.tracking import Tracker

    tracker = Tracker(exp.mlflow_uri, exp.name)
    try:
        return Search(exp, tracker).run().study
    finally:
        tracker.end_study()


def test_a_warm_start_informs_the_sampler_and_the_energy_model_from_the_first_trial(tmp_path, monkeypatch):
    """An earlier study (8 trials) warm-starts a new one of the same pipeline on this machine: the
    new study's first trial after its baseline is already a model-based, cost-weighed proposal (no
    random start-up: TPE and the energy model both learned from the earlier trials, rescaled by
    the two baselines), the study states what the warm start contributed, and nothing of the
    earlier study enters the new one. A missing source, or one from another machine, is refused."""
    import pytest

    from greenknobs.errors import GreenknobsError

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    common = {"meter": {"name": "user_meters:WallClockMeter", "params": {"watts": 10.0}}, "reuse": False,
              "pipeline": {"name": "greenknobs.testing.standin:SleepPipeline", "phase_s": 0.0, "training_s_per_unit": 0.002},
              "stop_hopeless": {"enabled": False}}
    source = _search(experiment(tmp_path, name="earlier", sampler="random", budget={"trials": 8}, **common))
    assert len([t for t in source.trials if t.state.name == "COMPLETE"]) >= 6

    cold = _search(experiment(tmp_path, name="cold", budget={"trials": 2}, **common))
    assert not any(t.user_attrs.get("cost_weighing") for t in cold.trials)  # a random start-up trial

    warm = _search(experiment(tmp_path, name="warm", budget={"trials": 2}, warm_start=["earlier"], **common))
    assert len(warm.trials) == 2  # its own baseline and one trial: nothing copied in
    weighing = warm.trials[1].user_attrs.get("cost_weighing")
    assert weighing and weighing["candidates"] == 24 and weighing["alpha"] > 0
    stated = warm.user_attrs["warm_start"]["sources"][0]
    assert stated["study"] == "earlier" and stated["trials"] == len(
        [t for t in source.trials if t.state.name == "COMPLETE" and t.user_attrs.get("duplicate_of") is None])
    assert stated["energy_scale"] and 0.2 < stated["energy_scale"] < 5 and stated["quality_scale"] == 1.0

    with pytest.raises(GreenknobsError, match="no study 'never-ran'"):
        _search(experiment(tmp_path, name="w2", budget={"trials": 2}, warm_start=["never-ran"], **common))
    source.set_user_attr("hardware", {"cpu": "another CPU", "cores": 64, "gpus": [], "meter": "zeus"})
    with pytest.raises(GreenknobsError, match="another CPU x64.*say nothing about this machine"):
        _search(experiment(tmp_path, name="w3", budget={"trials": 2}, warm_start=["earlier"], **common))


def test_trials_running_in_other_workers_hold_their_predicted_energy_against_the_budget(tmp_path):
    """With several workers, what is left of the budget is less what the trials already running
    are predicted still to spend (predicted total less their spent so far); the asking trial and
    a trial that has not drawn its values yet hold nothing."""
    study = studies.open_study(experiment(tmp_path))
    predict = lambda v: 100.0 * v["standin.width"]
    running = studies.ask(study)
    running.set_user_attr("knob_values", {"standin.width": 3, "standin.depth": 8})
    running.set_user_attr("spent", {"energy_j": 120.0})
    fresh = studies.ask(study)  # no values drawn yet
    me = studies.ask(study)
    me.set_user_attr("knob_values", {"standin.width": 4, "standin.depth": 8})
    assert studies.in_flight_j(study, predict, but=me.number) == 180.0  # 300 predicted - 120 spent
    assert studies.in_flight_j(study, predict, but=running.number) == 400.0  # the other one: me
    running.set_user_attr("spent", {"energy_j": 500.0})  # dearer than predicted: holds nothing more
    assert studies.in_flight_j(study, predict, but=me.number) == 0.0
    assert fresh.number not in (me.number, running.number)
