"""Serving energy at steady state (greenknobs.meters.steady): warm-up excluded, a fixed validation
workload, several windows, J per 1,000 predictions with spread, provenance and latency; and the
inference_per_1k objective reads it. Tiny windows keep this at a few seconds."""

from __future__ import annotations

import os
import time

import pytest

from greenknobs.config import parse_experiment
from greenknobs.errors import ConfigError
from greenknobs.knobs import get_knob
from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.meters.steady import ServingConfig, measure, percentile
from greenknobs.pipeline import execute_trial
from greenknobs.runtime import Runtime
from greenknobs.testing import fixtures as F

FAST = ServingConfig(measure=True, batch_size=4, requests=16, warmup_s=0.0, window_s=0.15, windows=2)


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_warm_up_is_excluded_and_each_window_is_per_1k():
    meter = CpuModelMeter()
    calls = []

    def serve(i: int) -> int:
        burn(0.3 if not calls else 0.002)  # a costly first call (an export, a first allocation)
        calls.append(i)
        return 4

    try:
        record, spent = measure(meter, serve, batches=3, cfg=FAST, rows=12, batch_size=4)
    finally:
        meter.close()
    assert record["warmup"]["batches"] == 3 and len(record["windows"]) == 2
    for w in record["windows"]:
        assert w["j_per_1k"] == pytest.approx(w["energy_j"] * 1000 / w["predictions"])
        assert w["predictions"] % 12 == 0 and w["time_s"] >= FAST.window_s  # whole passes, long enough
    per_1k = sorted(w["j_per_1k"] for w in record["windows"])
    assert record["j_per_1k_min"] == per_1k[0] and record["j_per_1k_max"] == per_1k[-1]
    # the first call's 0.3 CPU-s is in the spend, never in the figure (0.002 CPU-s per 4 predictions)
    warm_j = spent.energy_j - sum(w["energy_j"] for w in record["windows"])
    assert warm_j > 5 * max(w["energy_j"] / w["passes"] for w in record["windows"])
    assert record["provenance"] == "modelled" and record["meter"] == "cpu-model"
    assert 0 < record["latency_ms"]["p50"] <= record["latency_ms"]["p95"] < 300
    assert record["wh_per_1k"] == pytest.approx(record["j_per_1k"] / 3600)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0 and percentile([7.0], 95) == 7.0


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from pipelines.text_classification import TextClassificationPipeline

    root = tmp_path_factory.mktemp("serving")
    os.environ["GREENKNOBS_CACHE_DIR"] = str(root / "cache")
    opts = TextClassificationPipeline.validate_options(F.classification_options(
        F.make_tiny_model_dir(root / "tiny", layers=2), F.make_tiny_csv(root / "t.csv")))
    return TextClassificationPipeline(opts)


def trial(pipeline, overrides, serving=FAST):
    values = {n: get_knob(n).default for n in pipeline.knobs}
    values.update({k: v for k, v in F.TINY_BASELINE.items() if k in values})
    values.update(overrides)
    meter = CpuModelMeter()
    try:
        return execute_trial(pipeline, [(get_knob(n), v) for n, v in values.items()], meter,
                             Runtime(device="cpu", cpu_count=2, gpu_count=0), 0, serving=serving)
    finally:
        meter.close()


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_a_trial_measures_serving_and_inference_per_1k_reads_it(pipeline, engine):
    result, ctx = trial(pipeline, {"inference.engine": engine})
    s = result.serving
    assert s is not None and s["workload"] == {"split": "validation", "rows": min(16, len(ctx.validation)),
                                               "batch_size": 4, "batches": -(-min(16, len(ctx.validation)) // 4)}
    assert s["provenance"] == "modelled" and len(s["windows"]) == 2 and s["j_per_1k"] > 0
    assert result.energy_for_scope("inference_per_1k") == s["j_per_1k"]
    assert ctx.samples["serving"] > sum(w["predictions"] for w in s["windows"])  # the windows' rows, and the warm-up's
    ev = result.verifications["inference.engine"]
    if engine == "onnxruntime":  # the engine served the steady-state windows too
        assert ev["session_runs"] == ev["serving_forwards"] and ev["serving_forwards"] > 2 * s["workload"]["batches"]
    assert result.to_dict()["serving"]["j_per_1k"] == s["j_per_1k"]


def test_without_serving_the_scope_falls_back_to_the_scoring_window(pipeline):
    result, _ = trial(pipeline, {}, serving=None)
    assert result.serving is None
    n = result.samples["inference"]
    assert result.energy_for_scope("inference_per_1k") == pytest.approx(result.phases["inference"].energy_j * 1000 / n)


def _exp(**extra):
    return {"name": "x", "pipeline": {"name": "text-classification"}, "knobs": {}, **extra}


def test_serving_block_is_parsed_and_bad_input_names_the_key():
    exp = parse_experiment(_exp(objectives={"energy": "inference_per_1k"}, serving={"window_s": 0.5, "windows": 4}))
    assert exp.serving_to_measure() == ServingConfig(window_s=0.5, windows=4)
    assert parse_experiment(_exp()).serving_to_measure() is None  # energy: total -> not measured unless asked
    assert parse_experiment(_exp(serving={"measure": True})).serving_to_measure() is not None
    for bad, key in (({"windows": 0}, "serving.windows"), ({"batch": 3}, "serving.batch"),
                     ({"measure": "yes"}, "serving.measure"), ({"window_s": -1}, "serving.window_s")):
        with pytest.raises(ConfigError, match=key):
            parse_experiment(_exp(serving=bad))

