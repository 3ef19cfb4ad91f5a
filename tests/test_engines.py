"""inference.engine: ONNX Runtime and OpenVINO serve the trained model (tiny BERT, CPU, ~1 s a trial).

Each test reads evidence recorded inside the computation -- the session that served, the nodes its
profiled first run executed, PyTorch-vs-engine agreement on validation rows -- and each would fail
if the mechanism did nothing or served another model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from greenknobs.errors import IncompatibleKnobs, KnobError
from greenknobs.knobs import REGISTRY
from greenknobs.ml import engines, onnx_engine
from greenknobs.runtime import Runtime
from greenknobs.testing import fixtures as F

ENGINES = ("onnxruntime", "openvino")
INT8 = {"onnxruntime": ("dynamic_int8", "static_int8"), "openvino": ("static_int8",)}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from pipelines.text_classification import TextClassificationPipeline

    root = tmp_path_factory.mktemp("engines")
    os.environ["GREENKNOBS_CACHE_DIR"] = str(root / "cache")
    opts = TextClassificationPipeline.validate_options(F.classification_options(
        F.make_tiny_model_dir(root / "tiny", layers=2), F.make_tiny_csv(root / "t.csv")))
    return TextClassificationPipeline(opts)


@pytest.fixture(scope="module")
def runtime():
    return Runtime(device="cpu", cpu_count=len(os.sched_getaffinity(0)), gpu_count=0)


_runs: dict = {}


def run(pipeline, runtime, **knobs):
    key = tuple(sorted(knobs.items()))
    if key not in _runs:
        _runs[key] = F.run_knobs(pipeline, {f"inference.{k}": v for k, v in knobs.items()}, runtime)
    return _runs[key]


@pytest.mark.parametrize("engine", ENGINES)
def test_fp32_engine_serves_every_prediction_and_agrees_with_pytorch(pipeline, runtime, engine):
    r = run(pipeline, runtime, engine=engine)
    ev = r.verifications["inference.engine"]
    assert ev["engine"] == engine and ev["providers"] in (["CPUExecutionProvider"], ["CPU"])
    assert ev["session"] == {"onnxruntime": "InferenceSession", "openvino": "CompiledModel"}[engine]
    assert ev["session_runs"] == ev["serving_forwards"] > 0  # validation and test, every batch
    if engine == "openvino":  # stated, since the CPU plugin's default on AMX/AVX512-BF16 machines is bf16
        assert ev["build"]["inference_precision"] == "f32"
        assert ev["ran"]["bf16_nodes_ran"] == 0  # and held: no executed kernel ran in bf16
    assert ev["ran"]["nodes_ran"] > 0 and ev["ran"]["int8_nodes_ran"] == 0 and ev["ran"]["float_matmuls_ran"] > 0
    a = ev["agreement"]
    assert a["rows"] >= 8  # the tiny validation split, every row
    assert a["argmax_agree"] == a["rows"] and a["max_abs_diff"] < 1e-4
    torch_r = run(pipeline, runtime, engine="torch")
    assert r.quality["validation"]["macro_f1"] == pytest.approx(torch_r.quality["validation"]["macro_f1"])
    assert torch_r.verifications["inference.engine"]["session_runs"] == 0


@pytest.mark.parametrize("engine,quantization", [(e, q) for e in ENGINES for q in INT8[e]])
def test_int8_graph_ran_int8_nodes(pipeline, runtime, engine, quantization):
    r = run(pipeline, runtime, engine=engine, quantization=quantization)
    ran = r.verifications["inference.engine"]["ran"]
    assert ran["int8_nodes_ran"] >= 8 and ran["int8_kind"] == quantization.split("_")[0]  # 2 blocks x >= 4 Linears
    assert r.verifications["inference.quantization"]["value"] == quantization
    if quantization == "static_int8":
        assert r.verifications["inference.engine"]["calibration_rows"] > 0  # calibrated on training rows
    agreement = r.verifications["inference.engine"]["agreement"]
    assert agreement["argmax_agree"] >= 0.9 * agreement["rows"]


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@pytest.mark.parametrize("quantization", ["none", "static_int8"])
def test_openvino_bf16_is_the_plugins_precision_proven_by_the_kernels_that_ran(pipeline, runtime, quantization):
    """inference.precision bf16 with OpenVINO: the plugin compiles in bf16 (the PyTorch model is not
    cast) and its profiled run executed bf16 kernels; on a CPU without bf16 kernels the knob says so."""
    values = {"inference.engine": "openvino", "inference.precision": "bf16", "inference.quantization": quantization}
    if not _cpu_has_bf16():
        with pytest.raises(KnobError, match="inference.precision did not take effect: no node .* ran in bf16"):
            F.run_knobs(pipeline, values, runtime)
        return
    r = F.run_knobs(pipeline, values, runtime)
    ev = r.verifications["inference.engine"]
    assert ev["build"]["precision"] == "bf16" and ev["ran"]["bf16_nodes_ran"] > 0
    assert r.verifications["inference.precision"]["bf16_nodes_ran"] == ev["ran"]["bf16_nodes_ran"]
    assert ev["agreement"]["argmax_agree"] >= 0.9 * ev["agreement"]["rows"]  # bf16 rounds: the argmax is the bar
    if quantization == "static_int8":
        assert ev["ran"]["int8_nodes_ran"] >= 8


def test_a_wrong_engine_output_fails_the_agreement_check(pipeline, runtime, monkeypatch):
    real = onnx_engine.OrtServer.run
    monkeypatch.setattr(onnx_engine.OrtServer, "run", lambda self, feeds: real(self, feeds) + 0.5)
    with pytest.raises(KnobError, match="inference.engine did not take effect: engine logits differ"):
        F.run_knobs(pipeline, {"inference.engine": "onnxruntime"}, runtime)


def test_mutants_fail_verification(pipeline, runtime):
    for name, values in (("inference.engine", {"inference.engine": "openvino"}),
                         ("inference.quantization", {"inference.engine": "onnxruntime", "inference.quantization": "dynamic_int8"})):
        cls = REGISTRY[name]
        cls.acting = False
        try:
            with pytest.raises(KnobError, match=name):
                F.run_knobs(pipeline, values, runtime)
        finally:
            del cls.acting


@pytest.mark.parametrize("engine,module", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_an_engine_not_installed_is_infeasible_with_the_reason(pipeline, runtime, monkeypatch, engine, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    assert not engines.availability(engine, "cpu").available
    started = []
    monkeypatch.setattr(pipeline, "data", lambda *a: started.append(True))
    with pytest.raises(IncompatibleKnobs, match=f"inference.engine='{engine}': .*not installed"):
        F.run_knobs(pipeline, {"inference.engine": engine}, runtime)
    assert not started


@pytest.mark.parametrize("values,why", [
    ({"inference.engine": "onnxruntime", "inference.early_exit": 0.9, "training.exit_head_depth": 0.5}, "early exit"),
    ({"inference.engine": "onnxruntime", "inference.compile": "inductor"}, "torch.compile"),
    ({"inference.engine": "onnxruntime", "inference.precision": "bf16"}, "fp32 graph"),
    ({"inference.engine": "onnxruntime", "model.weight_dtype": "bf16"}, "bf16/fp16 weights"),
    ({"inference.engine": "openvino", "inference.quantization": "dynamic_int8"}, "use static_int8"),
    ({"inference.quantization": "static_int8"}, "exported engines' path"),
    ({"inference.engine": "onnxruntime", "inference.precision": "fp16"}, "needs a CUDA GPU"),
])
def test_combinations_that_cannot_work_are_refused_before_the_trial(pipeline, runtime, monkeypatch, values, why):
    started = []
    monkeypatch.setattr(pipeline, "data", lambda *a: started.append(True))
    with pytest.raises(IncompatibleKnobs, match=why):
        F.run_knobs(pipeline, values, runtime)
    assert not started


def test_openvino_is_cpu_only_and_cuda_needs_the_cuda_provider():
    knob = REGISTRY["inference.engine"]()
    with pytest.raises(IncompatibleKnobs, match="needs a cpu device"):
        knob.check("openvino", Runtime(device="cuda", cpu_count=2, gpu_count=1))
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(IncompatibleKnobs, match="CUDAExecutionProvider"):
            knob.check("onnxruntime", Runtime(device="cuda", cpu_count=2, gpu_count=1))


def test_after_the_trial_the_model_serves_itself_again_and_the_session_is_freed(pipeline, runtime):
    result, ctx = F.run_knobs_with_context(pipeline, {"inference.engine": "openvino"}, runtime)
    assert result.verifications["inference.engine"]["session_runs"] > 0
    assert "forward" not in ctx.model.__dict__  # the engine's forward was undone by the knob's release
    assert not ctx.trial.scratch(REGISTRY["inference.engine"]()).get("close")


def test_calling_the_served_model_with_other_inputs_is_a_clear_error():
    import torch

    from greenknobs.ml import hf

    model = hf.tiny_bert_classifier(num_labels=3, layers=1, hidden=32, vocab=100).eval()
    ev = engines.EngineEvidence()
    close = engines.serve_through(model, "onnxruntime", "none", ev, phase=lambda: "inference", device="cpu",
                                  calibration=None, pad_id=0)
    ids = torch.randint(1, 100, (2, 6))
    try:
        first = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        assert ev.engine == "onnxruntime" and ev.agreement["rows"] == 2 and first.shape == (2, 3)
        with pytest.raises(KnobError, match="exported for inputs"):
            model(input_ids=ids)
    finally:
        close()
    assert "forward" not in model.__dict__
