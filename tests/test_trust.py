"""Numbers a reviewer would accept: the search selects on validation and reports on test, nothing
leaks between splits or between trials, failures are recorded, inert settings are not re-run,
and the front is the front of the *feasible* trials."""

from __future__ import annotations

import csv
import random

import pytest
import yaml
from conftest import write_experiment

from greenknobs import search
from greenknobs.config import load_experiment
from greenknobs.errors import GreenknobsError
from greenknobs.meters.base import EnergyMeter, WindowRegistry
from greenknobs.phases import MODELLED, Availability, Measurement
from greenknobs.runtime import Runtime, usable_cores
from greenknobs.search import runner as search_runner
from greenknobs.search.study import TrialState
from greenknobs.testing import fixtures as F
from greenknobs.tracking import Tracker
from pipelines.text_classification import TextClassificationPipeline

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Runtime("cpu", usable_cores(), 0)


# The tiny model needs a few epochs at a brisk rate to learn its tiny data; at 1e-4 it collapses.
LEARNS = {"data.max_seq_len": {"default": 32, "choices": [8, 16, 32]},
          "model.layers_removed": {"default": 0, "low": 0, "high": 1},
          "training.learning_rate": {"default": 1e-2, "low": 1e-4, "high": 3e-2, "log": True},
          "training.epochs": 5}


def run_search(path, trials=None):
    exp = load_experiment(path).with_overrides(trials=trials)
    tracker = Tracker(exp.mlflow_uri, exp.name)
    try:
        outcome = search.Search(exp, tracker).run()
        published = search.publish(exp, outcome.study, tracker)
    finally:
        tracker.end_study()
    return exp, outcome, published, tracker


class ShuffledTestLabels(TextClassificationPipeline):
    """The built-in classifier with the *test* labels scrambled after the split."""

    def data(self, trial):
        super().data(trial)
        ctx = trial.ctx
        labels = [r["label"] for r in ctx.test]
        random.Random(7).shuffle(labels)
        for r, y in zip(ctx.test, labels):
            r["label"] = y


class FailsOffBaseline(TextClassificationPipeline):
    """Raises an unexpected error (not a KnobError) in training whenever inputs are cut below 32 tokens."""

    def training(self, trial):
        if trial.knob("data.max_seq_len") < 32:
            raise ValueError("a bug in the training step")
        super().training(trial)


class OneJoulePerPhase(EnergyMeter):
    """A deterministic meter: every window is 1 J, so two searches can be compared exactly."""

    name, provenance, measures = "one-joule", MODELLED, ("cpu",)
    resolution_s = 1e-9  # no window is "too short": each phase runs exactly once

    def __init__(self, *a, **k):
        self._w = WindowRegistry(self.name)

    @classmethod
    def probe(cls):
        return Availability(True, "test meter")

    def begin_window(self, key):
        self._w.open(key, None)

    def end_window(self, key):
        self._w.close(key)
        return Measurement(1.0, 0.01, MODELLED, self.name, {"cpu": {"energy_j": 1.0, "provenance": MODELLED}}, {"j": 1})


@pytest.fixture
def exp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _pareto(rows):
    """The non-dominated set of complete, feasible rows, computed here from scratch."""
    ok = [r for r in rows if r.complete and r.feasible]
    def dominated(a):
        return any(b.energy_j <= a.energy_j and b.validation_quality >= a.validation_quality
                   and (b.energy_j < a.energy_j or b.validation_quality > a.validation_quality) for b in ok)
    return {r.trial for r in ok if not dominated(r)}


def test_infeasible_trials_are_excluded_from_the_front(exp_dir, tiny_model_dir, tiny_csv):
    # completed trials that miss the floor (not stopped early as hopeless: this is about the front)
    path = write_experiment(exp_dir, tiny_model_dir, tiny_csv, budget={"trials": 1}, knobs=LEARNS,
                            constraints={"min_quality_retained": 0.9, "beat_trivial_by": 0.05},
                            stop_hopeless={"enabled": False})
    run_search(path)  # the baseline
    study = search.open_study(load_experiment(path))
    # cheaper than the baseline (shorter inputs, a layer fewer) and trained too gently to keep its quality
    study.enqueue_trial({"data.max_seq_len": 8, "model.layers_removed": 1, "training.learning_rate": 1e-4})
    study.enqueue_trial({"data.max_seq_len": 16, "model.layers_removed": 1, "training.learning_rate": 1e-4})
    _, outcome, published, _ = run_search(path, trials=3)  # the study's total
    rows = published.all_rows
    infeasible = [r for r in rows if r.complete and not r.feasible]
    assert infeasible, "the setup must produce a constraint-violating trial"
    front = {r.trial for r in published.rows}
    assert front == _pareto(rows)
    assert not front & {r.trial for r in infeasible}
    base = next(r for r in rows if r.baseline)
    assert any(r.energy_j < base.energy_j for r in infeasible)  # would have been on an unconstrained front


def test_shuffled_test_labels_change_nothing_the_search_sees(tmp_path, tiny_model_dir, tiny_csv, monkeypatch):
    monkeypatch.setattr(search_runner, "create_meter", lambda *a, **k: OneJoulePerPhase())
    outcomes = {}
    for label, pipeline in (("plain", "text-classification"), ("shuffled", "test_trust:ShuffledTestLabels")):
        work = tmp_path / label
        work.mkdir()
        monkeypatch.chdir(work)
        exp = F.tiny_experiment(work, tiny_model_dir, tiny_csv, sampler="tpe", budget={"trials": 5}, knobs=LEARNS)
        exp["pipeline"]["name"] = pipeline
        (work / "exp.yaml").write_text(yaml.safe_dump(exp))
        _, outcome, published, _ = run_search(work / "exp.yaml")
        # (a trial stopped early as hopeless has no summary: that decision reads validation only, too)
        outcomes[label] = ([(t.params, t.state.name, t.values, (t.user_attrs.get("summary") or {}).get("quality"),
                             t.user_attrs.get("progress_check")) for t in outcome.study.trials],
                           [r.trial for r in published.rows],
                           [r.test_quality for r in published.all_rows])
    plain, shuffled = outcomes["plain"], outcomes["shuffled"]
    assert plain[0] == shuffled[0]  # every suggestion, objective value and validation score
    assert plain[1] == shuffled[1]  # the front
    assert plain[2] != shuffled[2]  # while the held-out figures did change


def test_any_exception_is_a_recorded_failure_and_a_repeated_one_stops_the_search(exp_dir, tiny_model_dir, tiny_csv):
    path = write_experiment(exp_dir, tiny_model_dir, tiny_csv, budget={"trials": 1})
    raw = yaml.safe_load(path.read_text())
    raw["pipeline"]["name"] = "test_trust:FailsOffBaseline"
    path.write_text(yaml.safe_dump(raw))
    run_search(path)  # the baseline runs at 32 tokens
    study = search.open_study(load_experiment(path))
    study.enqueue_trial({"data.max_seq_len": 16})
    study.enqueue_trial({"data.max_seq_len": 32, "model.layers_removed": 1})
    _, outcome, _, tracker = run_search(path, trials=3)
    failed, fine = outcome.study.trials[1], outcome.study.trials[2]
    assert failed.state == TrialState.FAIL and "ValueError: a bug in the training step" in (
        failed.user_attrs["fail_type"] + ": " + failed.user_attrs["fail_reason"])
    run = tracker.client.get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["state"] == "failed"
    assert "traceback.txt" in {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
    assert fine.state == TrialState.COMPLETE  # the search went on

    for _ in range(3):
        study.enqueue_trial({"data.max_seq_len": 8})
    with pytest.raises(GreenknobsError, match="same error ended 3 trials in a row"):
        run_search(path, trials=8)
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string="attributes.status = 'RUNNING'")
    assert not [r for r in runs if r.data.tags.get("greenknobs.role") == "trial"]  # none left RUNNING


def test_inert_settings_are_canonicalised_and_duplicates_reuse_the_result(exp_dir, tiny_model_dir, tiny_csv):
    path = write_experiment(exp_dir, tiny_model_dir, tiny_csv, budget={"trials": 1}, knobs={
        "model.lora_rank": {"default": 0, "choices": [0, 4]},
        "model.lora_alpha": {"default": 16, "choices": [16, 32]},
        "data.max_seq_len": 32, "training.learning_rate": 1e-3})
    run_search(path)
    study = search.open_study(load_experiment(path))
    study.enqueue_trial({"model.lora_rank": 0, "model.lora_alpha": 32})  # alpha without LoRA does nothing
    _, outcome, _, tracker = run_search(path, trials=2)
    base, twin = outcome.study.trials
    assert twin.state == TrialState.COMPLETE and twin.user_attrs["duplicate_of"] == base.number
    assert twin.user_attrs["knob_values"]["model.lora_alpha"] == 16
    assert "model.lora_alpha=32 -> 16" in twin.user_attrs["canonicalised"][0]
    assert twin.values == base.values and twin.user_attrs["result"] == base.user_attrs["result"]
    assert tracker.client.get_run(twin.user_attrs["mlflow_run_id"]).data.tags["duplicate_of"] == str(base.number)


def test_each_trial_starts_from_the_same_process_state(tmp_path):
    if usable_cores() < 2:
        pytest.skip("needs two cores to tell thread counts apart")
    pipe = TextClassificationPipeline(TextClassificationPipeline.validate_options(
        F.classification_options(F.make_tiny_model_dir(tmp_path / "m"), F.make_tiny_csv(tmp_path / "t.csv"))))
    one = F.run_knobs(pipe, {"system.threads": 1}, CPU)
    two = F.run_knobs(pipe, {"system.threads": 2}, CPU)
    for r in (one, two):  # data and model phases run at the process default, whatever the last trial set
        assert r.phases["data"].details["process_state_at_start"]["threads"] == usable_cores()
        assert r.phases["model"].details["process_state_at_start"]["threads"] == usable_cores()
    assert one.verifications["system.threads"]["threads_in_training"] == 1
    assert two.verifications["system.threads"]["threads_in_training"] == 2
    assert "torch.compile graphs" in two.process_state["reset"]["caches_cleared"] or \
        two.process_state["reset"]["threads_set_to"] == usable_cores()


def test_duplicates_are_dropped_before_the_split(tmp_path):
    path = tmp_path / "dups.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["body", "topic"])
        for i in range(60):
            w.writerow([f"story {i} about {'goals' if i % 2 else 'chips'}", "sport" if i % 2 else "tech"])
        for k in range(10):  # ten copies of one story, differing only in case and spacing
            w.writerow([("Story 0   about CHIPS" if k % 2 else "story 0 about chips"), "tech"])
    pipe = TextClassificationPipeline(TextClassificationPipeline.validate_options(
        F.classification_options(F.make_tiny_model_dir(tmp_path / "m"), path)))
    r, ctx = F.run_knobs_with_context(pipe, {}, CPU)
    assert r.phases["data"].details["duplicates_dropped_before_split"] == 10
    norm = lambda rows: {" ".join(x["text"].lower().split()) for x in rows}
    assert not norm(ctx.train) & norm(ctx.test) and not norm(ctx.train) & norm(ctx.validation)
    assert not norm(ctx.validation) & norm(ctx.test)


def test_the_trivial_guard_is_at_least_a_random_guesser():
    from greenknobs.ml.metrics import trivial_scores

    train = [i % 5 for i in range(1000)]
    truth = [i % 5 for i in range(400)]
    s = trivial_scores(train, truth)
    assert s["majority_macro_f1"] == pytest.approx(1 / 15)  # one class at F1 1/3, four at 0
    assert 0.18 < s["stratified_macro_f1"] < 0.22 and s["trivial_macro_f1"] == s["stratified_macro_f1"]


def test_the_batched_macro_f1_is_scikit_learns():
    import numpy as np

    from greenknobs.ml.metrics import macro_f1, macro_f1_rows

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 300)
    guesses = rng.integers(0, 4, (40, 300))  # label 4 never guessed
    guesses[0] = 2  # one label only
    guesses[1] = truth  # perfect
    assert macro_f1_rows(truth, guesses, range(5)) == pytest.approx([macro_f1(truth, g) for g in guesses], abs=1e-12)


class ManyLongTestInputs(TextClassificationPipeline):
    """The same pipeline with its test inputs replaced (not only relabelled): twenty times as many,
    each as long as the sequence-length limit allows (the knobs would catch a longer one)."""

    def data(self, trial):
        super().data(trial)
        ctx, limit = trial.ctx, trial.knob("data.max_seq_len")
        ctx.test = [{**r, "input_ids": (r["input_ids"][:-1] * 8)[:limit - 1] + r["input_ids"][-1:]}
                    for r in ctx.test for _ in range(20)]


def test_test_inputs_never_reach_the_joules_the_sampler_sees(tmp_path):
    """Under a real meter (the cpu-model reads this process's CPU time): replacing the test inputs
    moves the held-out window's energy many times over and leaves the objective -- the phases'
    energy, the validation quality, the workload -- where it was."""
    import statistics

    options = TextClassificationPipeline.validate_options(
        F.classification_options(F.make_tiny_model_dir(tmp_path / "m"), F.make_tiny_csv(tmp_path / "t.csv")))
    runs: dict[str, list] = {"plain": [], "replaced": []}
    for _ in range(3):  # interleaved: the machine's drift hits both alike; medians, not single runs
        runs["plain"].append(F.run_knobs(TextClassificationPipeline(options), {}, CPU))
        runs["replaced"].append(F.run_knobs(ManyLongTestInputs(options), {}, CPU))
    plain, replaced = runs["plain"][0], runs["replaced"][0]

    def median(kind, figure):
        return statistics.median(figure(r) for r in runs[kind])

    held_out = median("replaced", lambda r: r.held_out.energy_j) / median("plain", lambda r: r.held_out.energy_j)
    objective = median("replaced", lambda r: r.energy_for_scope("total")) / median("plain", lambda r: r.energy_for_scope("total"))
    assert held_out > 4, held_out  # the test inputs did cost more: where it shows
    assert 0.5 < objective < 2.0 and objective < held_out / 2, (objective, held_out)  # noise, not that multiple
    assert replaced.samples["test"] == 20 * plain.samples["test"]
    assert replaced.quality["validation"] == plain.quality["validation"] and replaced.samples["inference"] == plain.samples["inference"]
    assert "test" not in replaced.phases
