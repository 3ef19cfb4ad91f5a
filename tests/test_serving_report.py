"""The report's serving-energy section (greenknobs.report.serving): Wh per 1,000 queries at steady
state, a relative AI-Energy-Score-style rating in 20 % bands, and int8 that costs more than float."""

from __future__ import annotations

import pytest


def _row(trial, j, knobs, baseline=False, spread=0.05):
    from greenknobs.records import TrialRow

    serving = {"j_per_1k": j, "j_per_1k_min": j * (1 - spread), "j_per_1k_max": j * (1 + spread),
               "provenance": "modelled", "meter": "cpu-model", "latency_ms": {"p50": 3.0, "p95": 4.0, "per": "request batch of 8"}}
    return TrialRow(trial=trial, baseline=baseline, state="COMPLETE", metric="macro_f1", knobs=knobs,
                    validation_quality=0.9, energy_j=j, serving=serving)


def test_report_rates_the_recommendation_in_20_percent_bands_and_warns_on_costlier_int8():
    from greenknobs.report import serving as S

    base = _row(0, 100.0, {"inference.engine": "torch", "inference.quantization": "none"}, baseline=True)
    ort = _row(1, 20.0, {"inference.engine": "onnxruntime", "inference.quantization": "none"})
    ort_int8 = _row(2, 30.0, {"inference.engine": "onnxruntime", "inference.quantization": "dynamic_int8"})
    mid = _row(3, 55.0, {"inference.engine": "openvino", "inference.quantization": "none"})
    s = S.section([base, ort, ort_int8, mid], base, [ort, mid], ort)
    assert s["recommended"]["stars"] == 5 and s["recommended"]["wh_per_1k"] == pytest.approx(20 / 3600)
    assert S.stars(100.0, [20.0, 55.0, 100.0])[0] == 1 and S.stars(55.0, [20.0, 55.0, 100.0])[0] == 3  # 55: band 3 of 5
    assert s["band_edges_wh_per_1k"][0] == pytest.approx(20 / 3600) and s["saving_pct"] == pytest.approx(80.0)
    assert len(s["warnings"]) == 1 and "trial 2" in s["warnings"][0] and "trial 1" in s["warnings"][0]
    assert "(onnxruntime, dynamic_int8, fp32)" in s["warnings"][0]  # how it served, precision included
    assert s["recommended"]["served_as"] == "onnxruntime, fp32"
    text = "\n".join(S.markdown(s))
    assert "Wh per 1,000 queries" in text and "not an official AI Energy Score" in text and "modelled" in text
    assert S.section([base], base, [], None) is None  # nothing recommended: no section


def test_a_search_on_inference_per_1k_reports_serving_energy(tmp_path, tiny_model_dir, tiny_csv, monkeypatch):
    """End to end: the objective is the steady-state figure, and the report states it in Wh per 1,000 queries."""
    from conftest import write_experiment

    from greenknobs import search
    from greenknobs.config import load_experiment
    from greenknobs.search.report import write_report
    from greenknobs.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    path = write_experiment(tmp_path, tiny_model_dir, tiny_csv,
                            knobs={"data.max_seq_len": 32,
                                   "inference.engine": {"default": "torch", "choices": ["torch", "onnxruntime"]}},
                            objectives={"energy": "inference_per_1k", "quality": "macro_f1"},
                            serving={"requests": 16, "batch_size": 4, "warmup_s": 0.0, "window_s": 0.1, "windows": 2},
                            sampler="grid", budget={"trials": 2})
    exp = load_experiment(path)
    tracker = Tracker(exp.mlflow_uri, exp.name)
    outcome = search.Search(exp, tracker).run()
    rows = [t for t in outcome.study.get_trials() if t.state.name == "COMPLETE"]
    assert len(rows) == 2
    for t in rows:
        serving = t.user_attrs["result"]["serving"]
        assert t.values[0] == pytest.approx(serving["j_per_1k"])  # the objective is the steady-state figure
        assert t.user_attrs["summary"]["provenance"] == serving["provenance"] == "modelled"
        assert t.user_attrs["spent"]["phases"]["serving"] == pytest.approx(serving["spent_j"])  # in the search's cost
    report, files = write_report(exp, tracker)
    child = tracker.client.get_run(rows[0].user_attrs["mlflow_run_id"])  # MLflow has the figure and its provenance
    assert child.data.metrics["serving/j_per_1k"] == pytest.approx(rows[0].user_attrs["result"]["serving"]["j_per_1k"])
    assert {"serving/latency_p50_ms", "serving/latency_p95_ms", "serving/j_per_1k_max"} <= set(child.data.metrics)
    assert child.data.tags["provenance.serving"] == "modelled"
    tracker.end_study()
    assert report.serving is not None and report.serving["recommended"]["stars"] in range(1, 6)
    text = files["markdown"].read_text()
    assert "Wh per 1,000 queries" in text and "not an official AI Energy Score" in text
