"""The search on a tiny real pipeline (2-layer BERT, 90 texts): baseline first, constraints,
Optuna's Pareto front, failures recorded, reruns continue the study, MLflow parent/child runs."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
from conftest import write_experiment
from optuna.trial import TrialState

from greenknobs import search
from greenknobs.config import load_experiment
from greenknobs.search import study as studies
from greenknobs.tracking import Tracker


def run_search(path, trials=None):
    exp = load_experiment(path).with_overrides(trials=trials)
    tracker = Tracker(exp.mlflow_uri, exp.name)
    outcome = search.Search(exp, tracker).run()
    published = search.publish(exp, outcome.study, tracker)
    tracker.end_study()
    return exp, outcome, published, tracker


@pytest.fixture
def exp_path(tmp_path, tiny_model_dir, tiny_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_experiment(tmp_path, tiny_model_dir, tiny_csv)


def test_search_baseline_front_and_mlflow(exp_path):
    exp, outcome, published, tracker = run_search(exp_path)
    trials = outcome.study.get_trials()
    assert len(trials) == 4 and outcome.ran == 4
    t0 = trials[0]
    assert t0.user_attrs["baseline"] is True
    assert t0.params == {"data.max_seq_len": 32, "model.layers_removed": 0, "training.learning_rate": 1e-3}
    assert t0.state == TrialState.COMPLETE
    s0 = t0.user_attrs["summary"]
    assert s0["energy_saving_pct"] == 0.0 and s0["quality_retained_pct"] == 100.0
    assert s0["provenance"] == "modelled" and s0["meter"] == "cpu-model"
    # per-phase energy and knob evidence are stored in the study, not only in this process
    result = t0.user_attrs["result"]
    assert set(result["phases"]) == {"data", "model", "system", "training", "inference"}
    assert all(p["energy_j"] >= 0 and p["provenance"] == "modelled" for p in result["phases"].values())
    assert result["verifications"]["model.layers_removed"]["blocks_ran"]["training"] == 2
    # constraints were recorded through trial.set_constraint
    assert set(t0.constraints) == {"quality_retained"} and t0.constraints["quality_retained"] <= 0
    # the front is Optuna's own
    assert {r.trial for r in published.rows} == {t.number for t in outcome.study.best_trials}
    assert published.rows and all(r.feasible for r in published.rows)
    for key in ("pareto_csv", "trials_csv", "pareto_html", "pareto_png"):
        assert published.files[key].stat().st_size > 0
    front_csv = pd.read_csv(published.files["pareto_csv"])  # the model's size, as the model phase reported it
    assert (front_csv["parameters"] > 0).all() and front_csv["flops_per_prediction"].isna().all()
    assert front_csv["parameters"].tolist() == [r.model_size["parameters"] for r in published.rows]
    counts = tracker.counts()
    assert counts == {"parents": 1, "children": 4}
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.pareto = 'true'")
    assert {int(r.data.tags["trial"]) for r in runs} == {r.trial for r in published.rows}
    child = tracker.client.get_run(t0.user_attrs["mlflow_run_id"])
    assert child.data.params["model.layers_removed"] == "0"
    assert {"energy/total_j", "energy/training_j", "time/inference_s", "quality/validation_macro_f1",
            "quality/test_macro_f1", "result/energy_saving_pct", "result/quality_retained_pct"} <= set(child.data.metrics)
    assert child.data.tags["provenance"] == "modelled" and child.data.tags["meter"] == "cpu-model"


def test_rerun_continues_the_same_study_and_parent_run_up_to_its_total_budget(exp_path):
    run_search(exp_path, trials=2)
    _, again, _, _ = run_search(exp_path, trials=2)
    assert again.ran == 0  # the budget is the study's total: nothing left to do
    exp, outcome, _, tracker = run_search(exp_path, trials=4)
    trials = outcome.study.get_trials()
    assert len(trials) == 4
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1  # the baseline is not re-run
    assert tracker.counts() == {"parents": 1, "children": 4}
    # each publish logs a table snapshot of its own: MLflow's log_table would append to an existing one
    tables = {a.path for a in tracker.client.list_artifacts(tracker.parent_id, "pareto")}
    assert {"pareto/pareto_table_2_trials.json", "pareto/pareto_table_4_trials.json"} <= tables


def test_failing_trial_is_recorded_and_search_goes_on(tmp_path, tiny_model_dir, tiny_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the tiny model has 2 layers: removing 2 leaves none, which the knob refuses
    path = write_experiment(tmp_path, tiny_model_dir, tiny_csv,
                            knobs={"model.layers_removed": {"default": 0, "choices": [0, 1, 2]}})
    run_search(path, trials=1)  # the baseline
    study = search.open_study(load_experiment(path))
    study.enqueue_trial({"model.layers_removed": 2})
    study.enqueue_trial({"model.layers_removed": 1})
    exp, outcome, _, tracker = run_search(path, trials=3)  # the study's total
    states = {t.params["model.layers_removed"]: t for t in outcome.study.get_trials()}
    assert states[0].state == TrialState.COMPLETE and states[1].state == TrialState.COMPLETE
    failed = states[2]
    assert failed.state == TrialState.FAIL
    assert "would remove all 2 layers" in failed.user_attrs["fail_reason"]
    run = tracker.client.get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "would remove all" in run.data.tags["fail_reason"]


def test_infeasible_combination_is_recorded_not_crashing(tmp_path, tiny_model_dir, tiny_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_experiment(tmp_path, tiny_model_dir, tiny_csv,
                            knobs={"training.precision": {"default": "fp32", "choices": ["fp32", "fp16"]}})
    run_search(path, trials=1)  # the baseline
    search.open_study(load_experiment(path)).enqueue_trial({"training.precision": "fp16"})
    exp, outcome, _, tracker = run_search(path, trials=2)
    fp16 = next(t for t in outcome.study.get_trials() if t.params["training.precision"] == "fp16")
    # not a failure of the code: PRUNED with every constraint violated, which TPE and NSGA-II learn
    # from (they skip FAIL trials and would propose the combination again and again)
    assert fp16.state == TrialState.PRUNED and fp16.constraints and all(v > 0 for v in fp16.constraints.values())
    assert fp16.user_attrs["fail_reason"].startswith("infeasible: ")
    assert tracker.client.get_run(fp16.user_attrs["mlflow_run_id"]).data.tags["state"] == "infeasible"
    # and the search's cost counts it as refused, not as failed
    from greenknobs.search.publish import search_cost
    from greenknobs.search.rows import all_rows, front_rows

    cost = search_cost(exp, outcome.study, front_rows(outcome.study, exp), all_rows(outcome.study, exp))
    assert (cost.failed_trials, cost.infeasible_trials) == (0, 1)
    assert "0 failed, 1 infeasible before they started" in cost.outcomes()


def test_interrupted_trial_is_requeued_with_its_knob_values(exp_path):
    exp = load_experiment(exp_path)
    study = search.open_study(exp)
    # what Ctrl-C leaves behind: a FAIL trial with no recorded reason
    cut = study.ask({"data.max_seq_len": optuna.distributions.CategoricalDistribution([8, 16, 32])})
    study.tell(cut, state=TrialState.FAIL)
    _, outcome, _, _ = run_search(exp_path, trials=2)
    retry = [t for t in outcome.study.get_trials() if t.user_attrs.get("retry_of") == cut.number]
    assert len(retry) == 1 and retry[0].params["data.max_seq_len"] == cut.params["data.max_seq_len"]
    assert retry[0].state == TrialState.COMPLETE


def test_changed_baseline_refuses_to_continue(exp_path, tmp_path, tiny_model_dir, tiny_csv):
    run_search(exp_path, trials=1)
    changed = write_experiment(tmp_path, tiny_model_dir, tiny_csv,
                               knobs={"data.max_seq_len": {"default": 16, "choices": [8, 16, 32]}})
    from greenknobs.errors import ConfigError

    with pytest.raises(ConfigError, match="different experiment"):
        search.open_study(load_experiment(changed))


def test_relative_figures_and_constraints():
    exp = load_experiment("experiments/bbc-news-minilm.yaml")
    rel = search.relative_figures(exp, energy_j=40.0, quality=0.95, base_energy_j=100.0, base_quality=1.0)
    assert rel == pytest.approx({"energy_saving_pct": 60.0, "quality_retained_pct": 95.0})
    c = search.constraint_values(exp, quality=0.95, trivial=0.07, retained_pct=95.0)
    assert c["quality_retained"] == pytest.approx(0.02)  # 0.97 - 0.95 > 0: infeasible
    assert c["beat_trivial"] == pytest.approx(0.07 + 0.05 - 0.95)  # well above trivial: feasible


def test_password_is_masked():
    assert studies.mask_password("postgresql://gk:s3cret@127.0.0.1:5432/db") == "postgresql://gk:***@127.0.0.1:5432/db"
    assert studies.mask_password("sqlite:///runs/x.db") == "sqlite:///runs/x.db"
