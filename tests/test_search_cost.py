"""Search cost (issue 12): phase-output reuse, hopeless trials stopped early, the energy budget.

Reuse must be invisible to the objectives (a reused trial reports what its phases cost when they
ran) and visible in the search's cost (it spent only the load); nothing about it may change a
result.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from greenknobs.knobs import get_knob
from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.phase_store import PhaseStore
from greenknobs.pipeline import execute_trial, pipeline_class
from greenknobs.testing.fixtures import TINY_BASELINE, classification_options


@pytest.fixture
def tiny_pipeline(tiny_model_dir, tiny_csv):
    cls = pipeline_class("text-classification")
    return cls(cls.validate_options(classification_options(tiny_model_dir, tiny_csv)))


def _values(pipeline, **overrides):
    values = {name: get_knob(name).default for name in pipeline.knobs}
    values.update({k: v for k, v in TINY_BASELINE.items() if k in values})
    values.update(overrides)
    return [(get_knob(n), v) for n, v in values.items()]


def _run(pipeline, runtime, store, trial, workers_on_host=1, **overrides):
    meter = CpuModelMeter()
    try:
        return execute_trial(pipeline, _values(pipeline, **overrides), meter, runtime, 0, store=store,
                             trial_number=trial, workers_on_host=workers_on_host)
    finally:
        meter.close()


class CountingPhases:
    """Counts how often each phase method of a pipeline really runs."""

    def __init__(self, pipeline, monkeypatch):
        self.calls: dict[str, int] = {}
        for phase, method in (("data", "data"), ("model", "model"), ("system", "system"), ("training", "training"),
                              ("inference", "serve")):
            original = getattr(pipeline, method)

            def counted(trial, *args, _phase=phase, _original=original):
                if args[:1] != ("test",):  # serving the held-out split is not the inference phase
                    self.calls[_phase] = self.calls.get(_phase, 0) + 1
                return _original(trial, *args)
            monkeypatch.setattr(pipeline, method, counted)


def test_reuse_skips_upstream_phases_and_attributes_their_cost(tiny_pipeline, cpu_runtime, tmp_path, monkeypatch):
    store = PhaseStore(tmp_path / "reuse")
    counter = CountingPhases(tiny_pipeline, monkeypatch)
    first, _ = _run(tiny_pipeline, cpu_runtime, store, 0)
    assert first.reuse["status"] == "built"
    assert first.reuse["published"] == {"data": True, "model": True, "training": True}
    built = dict(counter.calls)  # inference may run several times in one window (shorter than the meter resolves)
    assert {p: built[p] for p in ("data", "model", "system", "training")} == \
        {"data": 1, "model": 1, "system": 1, "training": 1} and built["inference"] >= 1

    # only an inference knob differs: data, model and training come from the store
    second, _ = _run(tiny_pipeline, cpu_runtime, store, 1, **{"inference.batch_size": 4})
    assert second.reuse["status"] == "reused" and second.reuse["from_trial"] == 0
    assert second.reuse["boundary"] == "training" and second.reuse["phases"] == ["data", "model", "training"]
    ran = {p: counter.calls[p] - built[p] for p in built}
    assert {p: ran[p] for p in ("data", "model", "system", "training")} == \
        {"data": 0, "model": 0, "system": 1, "training": 0} and ran["inference"] >= 1
    # attributed: the objective sees what training cost when it ran; spent: only the load
    assert second.phases["training"].energy_j == pytest.approx(first.phases["training"].energy_j)
    assert second.phases["training"].details["spent_j"] == pytest.approx(second.reuse["load_j"])
    assert second.reuse["load_j"] < 0.5 * first.phases["training"].energy_j
    # the same trained model: the predictions (hence the scores) do not depend on the batch size
    assert second.quality["validation"]["macro_f1"] == pytest.approx(first.quality["validation"]["macro_f1"], abs=1e-6)
    # every knob still proves itself (verify raises otherwise): upstream ones from the evidence recorded
    # while training ran, the inference ones from this run's forward passes
    assert set(second.verifications) == set(tiny_pipeline.knobs)
    assert second.verifications["inference.batch_size"]["largest"] == 4
    assert second.verifications["training.learning_rate"]["steps"] > 0


def test_a_changed_upstream_knob_misses_and_resumes_from_the_last_shared_phase(tiny_pipeline, cpu_runtime, tmp_path):
    store = PhaseStore(tmp_path / "reuse")
    _run(tiny_pipeline, cpu_runtime, store, 0)
    # a training knob differs: the trained model cannot be reused, the pruned model (after "model") can
    lr, _ = _run(tiny_pipeline, cpu_runtime, store, 1, **{"training.learning_rate": 3e-3})
    assert lr.reuse["status"] == "reused" and lr.reuse["boundary"] == "model"
    assert lr.reuse["published"] == {"training": True}
    # resuming there changes nothing: the same scores as the trial run in one piece, without a store
    whole, _ = _run(tiny_pipeline, cpu_runtime, None, 9, **{"training.learning_rate": 3e-3})
    assert lr.quality == whole.quality
    assert lr.phases["training"].details == {**whole.phases["training"].details,
                                             "measurement": lr.phases["training"].details["measurement"],
                                             "process_state_at_start": lr.phases["training"].details["process_state_at_start"]}
    # a data knob differs: nothing is shared
    seq = _run(tiny_pipeline, cpu_runtime, store, 2, **{"data.max_seq_len": 16})[0]
    assert seq.reuse["status"] == "built"
    # a cost-only knob differs: same output, different cost -- the stored training energy would not be
    # what this trial's training costs, so training runs (the model before it is shared)
    threads = _run(tiny_pipeline, cpu_runtime, store, 3, **{"system.threads": 2})[0]
    assert threads.reuse["boundary"] == "model"


def test_a_corrupt_entry_is_rebuilt(tiny_pipeline, cpu_runtime, tmp_path):
    import json

    store = PhaseStore(tmp_path / "reuse")
    _run(tiny_pipeline, cpu_runtime, store, 0)
    trained = next(m.parent for m in store.root.glob("*/manifest.json")
                   if json.loads(m.read_text())["boundary"] == "training")
    blob = trained / "context.pkl"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    again = _run(tiny_pipeline, cpu_runtime, store, 1)[0]
    # the checksum catches it: the entry is dropped, training runs again (on the intact model entry)
    assert again.reuse["boundary"] == "model" and again.reuse["published"] == {"training": True}
    third = _run(tiny_pipeline, cpu_runtime, store, 2)[0]
    assert third.reuse["boundary"] == "training" and third.reuse["from_trial"] == 1
    assert third.quality == again.quality


def test_two_processes_filling_one_entry_leave_one_good_copy(tmp_path):
    root = tmp_path / "reuse"
    script = textwrap.dedent(f"""
        import sys, time
        from greenknobs.phase_store import PhaseStore
        from greenknobs.phases import Measurement, PhaseResult
        store = PhaseStore({str(root)!r})
        while time.time() < float(sys.argv[2]):
            pass  # start together
        payload = {{"writer": sys.argv[1], "blob": bytes([int(sys.argv[1])]) * 20_000_000}}
        m = Measurement(energy_j=1.0, time_s=1.0, provenance="modelled", meter="cpu-model")
        ok = store.publish("k", payload, {{"training": PhaseResult("training", m, {{}})}}, {{"trial": int(sys.argv[1])}})
        print(ok)
    """)
    import time
    start = str(time.time() + 3.0)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i), start], stdout=subprocess.PIPE, text=True)
             for i in (1, 2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(outs) == ["False", "True"]  # one published, the other's copy was dropped
    loaded = PhaseStore(root).load("k")
    assert loaded is not None
    payload, manifest = loaded.ctx, loaded.manifest
    assert payload["blob"] == bytes([int(payload["writer"])]) * 20_000_000  # not a mix of the two
    assert manifest["trial"] == int(payload["writer"])
    assert not list(root.glob(".k.*")), "temporary copies are cleaned up"


def test_the_store_evicts_least_recently_used(tmp_path):
    from greenknobs.phases import Measurement, PhaseResult

    store = PhaseStore(tmp_path / "reuse", max_bytes=2_500_000)
    m = Measurement(energy_j=1.0, time_s=1.0, provenance="modelled", meter="cpu-model")
    for key in ("a", "b"):
        store.publish(key, {"blob": b"x" * 1_000_000}, {"training": PhaseResult("training", m, {})}, {})
    assert store.load("a") is not None  # a is now more recently used than b
    store.publish("c", {"blob": b"x" * 1_000_000}, {"training": PhaseResult("training", m, {})}, {})
    assert store.load("b") is None and store.load("a") is not None and store.load("c") is not None


# -- in the search -------------------------------------------------------------------------------------
def _search(path, trials=None):
    from greenknobs import search
    from greenknobs.config import load_experiment
    from greenknobs.tracking import Tracker

    exp = load_experiment(path).with_overrides(trials=trials)
    tracker = Tracker(exp.mlflow_uri, exp.name)
    outcome = search.Search(exp, tracker).run()
    front = search.publish(exp, outcome.study, tracker)
    tracker.end_study()
    return outcome, front


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_feasible_model_gets_an_inference_variant_that_reuses_it(in_tmp, tiny_model_dir, tiny_csv):
    from conftest import write_experiment

    path = write_experiment(in_tmp, tiny_model_dir, tiny_csv, knobs={
        "training.learning_rate": {"default": 1e-3, "choices": [1e-3, 3e-3]},
        "inference.batch_size": {"default": 32, "choices": [4, 32]}}, budget={"trials": 2})
    outcome, front = _search(path)
    base, variant = outcome.study.get_trials()
    assert variant.user_attrs["variant_of"] == 0
    assert variant.params == {"training.learning_rate": 1e-3, "inference.batch_size": 4}
    assert variant.user_attrs["result"]["reuse"]["status"] == "reused"
    # the objective: what its phases cost when they ran (training attributed from the baseline) ...
    phases = variant.user_attrs["result"]["phases"]
    assert phases["training"]["energy_j"] == pytest.approx(base.user_attrs["result"]["phases"]["training"]["energy_j"])
    # ... the search's cost: what it spent (the load, then system and inference)
    spent, base_spent = variant.user_attrs["spent"]["phases"], base.user_attrs["spent"]["phases"]
    assert spent["data"] == spent["model"] == 0.0
    assert spent["training"] == pytest.approx(variant.user_attrs["result"]["reuse"]["load_j"])
    assert spent["training"] < 0.5 * (base_spent["data"] + base_spent["model"] + base_spent["training"])
    rows = {r.trial: r for r in front.all_rows}
    assert rows[1].reused_from == 0 and front.cost.phase_reused_trials == 1
    assert front.cost.search_spent_j == pytest.approx(sum(r.spent_j for r in front.all_rows)
                                                      + sum(e["energy_j"] for e in outcome.study.user_attrs.get("overhead", [])))


def test_a_hopeless_trial_is_stopped_partway_and_its_energy_counts(in_tmp, tiny_model_dir, tiny_csv):
    from conftest import write_experiment

    from greenknobs.config import load_experiment
    from greenknobs.search import study as studies

    # a baseline that learns (well above the trivial level), and a learning rate too small to move it
    path = write_experiment(in_tmp, tiny_model_dir, tiny_csv, knobs={
        "training.learning_rate": {"default": 1e-2, "choices": [1e-2, 1e-7]}, "training.epochs": 5},
        budget={"trials": 1}, constraints={"min_quality_retained": 0.9, "beat_trivial_by": 0.05})
    first, _ = _search(path)
    assert first.study.trials[0].values[1] > first.study.trials[0].user_attrs["summary"]["trivial_quality"] + 0.05
    studies.enqueue(first.study, {"training.learning_rate": 1e-7}, {})
    outcome, front = _search(path, trials=2)
    stopped = outcome.study.get_trials()[1]
    assert stopped.state.name == "PRUNED"
    check = stopped.user_attrs["progress_check"]
    assert check["hopeless"] and check["fraction"] >= load_experiment(path).stop_hopeless.at_fraction
    assert check["validation_quality"] <= check["trivial_bar"]
    assert "trivial" in stopped.user_attrs["stop_reason"]
    spent = stopped.user_attrs["spent"]
    # what ran counts: data, model, system, and training up to the stop (with its validation); inference never ran
    assert set(spent["phases"]) == {"data", "model", "system", "training"} and spent["phases"]["training"] > 0
    assert front.cost.stopped_trials == 1 and 1 not in {r.trial for r in front.rows}


def test_the_energy_budget_stops_the_search(in_tmp, tiny_model_dir, tiny_csv):
    from conftest import write_experiment

    path = write_experiment(in_tmp, tiny_model_dir, tiny_csv, budget={"trials": 10, "energy_j": 1})
    outcome, _ = _search(path)
    from greenknobs.search.study import spent_j

    trials = [t for t in outcome.study.get_trials() if t.state.name != "WAITING"]  # a queued variant never ran
    assert outcome.stopped_by.startswith("energy budget") and outcome.spent_j >= 1
    # the baseline always runs; a trial starts only while less than the budget has been spent (the
    # tiny baseline costs about 1 J, so one more may fit), and none after
    assert 1 <= len(trials) <= 3 and trials[0].user_attrs.get("baseline")
    last = float(trials[-1].user_attrs.get("spent", {}).get("energy_j", 0.0))
    assert len(trials) == 1 or spent_j(outcome.study) - last < 1.0


def test_variants_cover_untried_combinations_of_the_inference_knobs(in_tmp, tiny_model_dir, tiny_csv):
    from conftest import write_experiment

    path = write_experiment(in_tmp, tiny_model_dir, tiny_csv, knobs={
        "training.learning_rate": {"default": 1e-3, "choices": [1e-3, 3e-3]},
        "inference.batch_size": {"default": 32, "choices": [4, 32]},
        "inference.quantization": {"default": "none", "choices": ["none", "dynamic_int8"]}},
        budget={"trials": 4}, reuse={"inference_variants": 3})
    outcome, _ = _search(path)
    base, *variants = outcome.study.get_trials()
    assert [t.user_attrs.get("variant_of") for t in variants] == [0, 0, 0]
    served = {(t.params["inference.batch_size"], t.params["inference.quantization"]) for t in variants}
    assert served == {(4, "none"), (32, "dynamic_int8"), (4, "dynamic_int8")}  # every other combination, once
    assert all(t.params["training.learning_rate"] == 1e-3 for t in variants)
    assert all(t.user_attrs["result"]["reuse"]["status"] == "reused" for t in variants)


def test_a_trial_too_far_below_the_floor_stops_once_the_study_knows_how_much_training_adds(in_tmp, tiny_model_dir,
                                                                                          tiny_csv):
    from conftest import write_experiment

    from greenknobs.config import load_experiment
    from greenknobs.errors import HopelessTrial
    from greenknobs.search import Search
    from greenknobs.search import study as studies

    path = write_experiment(in_tmp, tiny_model_dir, tiny_csv, knobs={"training.learning_rate": {"default": 1e-3, "choices": [1e-3, 3e-3]}},
                            constraints={"min_quality_retained": 0.9, "beat_trivial_by": 0.05})
    exp = load_experiment(path)
    runner = Search(exp, tracker=None)
    runner.study = study = studies.open_study(exp)

    def finished(quality, check=None, **attrs):
        t = studies.ask(study)
        for k, v in attrs.items():
            t.set_user_attr(k, v)
        if check is not None:
            t.set_user_attr("progress_check", {"validation_quality": check, "hopeless": False, "direction": "maximize"})
        studies.tell(study, t, (100.0, quality))

    finished(0.80, baseline=True, summary={"trivial_quality": 0.20})  # floor: 0.9 x 0.80 = 0.72
    verdicts = []
    for completed in range(4):  # each completed trial gained 0.10 after its check: allowed 1.5 x 0.10
        for midway in (0.50, 0.60):
            check = runner._hopeless_check(studies.ask(study))  # a fresh check per score: it runs once per trial
            try:
                check(0.5, lambda q=midway: q)
                verdicts.append((completed, midway, "runs on"))
            except HopelessTrial as exc:
                verdicts.append((completed, midway, "stopped"))
                assert "too far from the floor (0.7200)" in str(exc) and "gained at most 0.1000" in str(exc)
        if completed < 3:
            finished(0.70, check=0.60)
    # not before 3 completed trials; then 0.50 + 0.15 < 0.72 stops, 0.60 + 0.15 >= 0.72 runs on
    assert verdicts[:6] == [(n, q, "runs on") for n in range(3) for q in (0.5, 0.6)]
    assert verdicts[6:] == [(3, 0.5, "stopped"), (3, 0.6, "runs on")]


def test_reuse_attributes_only_costs_built_under_the_same_conditions(tiny_pipeline, cpu_runtime, tmp_path, monkeypatch):
    """The number of greenknobs workers on the host is part of the cost key (an entry built beside
    two other workers is not reused alone); a phase measured while other processes contended for
    the CPUs carries that mark into every trial that reuses it."""
    from greenknobs.meters import host_load

    quiet = dict(host_load.between(host_load.sample(), host_load.sample()), contended=False, others_cores=0.0)
    monkeypatch.setattr(host_load, "between", lambda a, b: quiet)  # this machine may be busy: say so explicitly
    store = PhaseStore(tmp_path / "reuse")
    first, _ = _run(tiny_pipeline, cpu_runtime, store, 0, workers_on_host=3)
    assert first.reuse["published"] == {"data": True, "model": True, "training": True}
    alone, _ = _run(tiny_pipeline, cpu_runtime, store, 1, workers_on_host=1)
    assert alone.reuse["status"] == "built"  # same outputs, other conditions: built again, not attributed 3 workers' cost
    again, _ = _run(tiny_pipeline, cpu_runtime, store, 2, workers_on_host=3)
    assert again.reuse["status"] == "reused" and again.reuse["from_trial"] == 0
    assert not again.phases["training"].details["measurement"]["contended"]

    busy = dict(quiet, contended=True, others_cores=1.5)
    monkeypatch.setattr(host_load, "between", lambda a, b: busy)
    other = PhaseStore(tmp_path / "other")
    contended, _ = _run(tiny_pipeline, cpu_runtime, other, 3)
    assert contended.phases["training"].details["measurement"]["contended"] is True
    monkeypatch.setattr(host_load, "between", lambda a, b: quiet)
    reused, _ = _run(tiny_pipeline, cpu_runtime, other, 4, **{"inference.batch_size": 4})
    assert reused.reuse["status"] == "reused" and reused.phases["training"].details["measurement"]["contended"] is True


def test_a_long_search_re_measures_the_baseline_on_its_stored_model(in_tmp, tiny_model_dir, tiny_csv, monkeypatch):
    """Every few finished trials (here 2) the baseline's inference phase is measured again from its
    stored trained model -- nothing retrained -- and the drift is recorded on the study, counted in
    the search's cost, and stated in the report."""
    from conftest import write_experiment

    from greenknobs.search import drift
    from greenknobs.search.report import search_policies

    monkeypatch.setattr(drift, "EVERY", 2)
    path = write_experiment(in_tmp, tiny_model_dir, tiny_csv, knobs={
        "inference.batch_size": {"default": 32, "choices": [4, 8, 16, 32]}}, budget={"trials": 3})
    outcome, _ = _search(path)
    checks = outcome.study.user_attrs["drift_checks"]
    assert len(checks) == 1 and checks[0]["after_finished"] == 3 and checks[0]["reused"] is True
    assert checks[0]["inference_j"] > 0 and checks[0]["baseline_inference_j"] > 0
    assert abs(checks[0]["drift"] - (checks[0]["inference_j"] / checks[0]["baseline_inference_j"] - 1)) < 1e-9
    spent = [e for e in outcome.study.user_attrs["overhead"] if e["kind"] == "drift check"]
    assert len(spent) == 1 and spent[0]["energy_j"] > 0
    assert "baseline inference re-measured" in search_policies(outcome.study)["baseline drift"]
