"""Combinations that cannot run are infeasible before anything runs; user knobs; LoRA that matches nothing."""

from __future__ import annotations

import pytest
import yaml

from greenknobs.errors import IncompatibleKnobs, KnobError
from greenknobs.runtime import Runtime
from greenknobs.testing import fixtures as F


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return F.make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), layers=4)


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    return F.make_tiny_texts_with_duplicates(tmp_path_factory.mktemp("data") / "texts.csv")


@pytest.fixture
def pipeline(model_dir, csv_path):
    from pipelines.text_classification import TextClassificationPipeline

    return TextClassificationPipeline(TextClassificationPipeline.validate_options(F.classification_options(model_dir, csv_path)))


CPU = Runtime(device="cpu", cpu_count=1, gpu_count=0)


@pytest.mark.parametrize("overrides, reason", [
    ({"training.precision": "fp16"}, "CUDA"),
    ({"system.gpu_power_limit": 0.7}, "GPU"),
    ({"model.lora_alpha": 32}, "model.lora_rank"),
    ({"model.lora_targets": "qv"}, "model.lora_rank"),
    ({"training.kd_temperature": 4.0}, "training.kd_lambda"),
    ({"inference.early_exit": 0.9}, "exit_head_depth"),
    ({"inference.precision": "bf16", "inference.quantization": "dynamic_int8"}, "int8"),
    ({"inference.compile": "inductor", "inference.early_exit": 0.9, "training.exit_head_depth": 0.5}, "compiled"),
    ({"model.quantized_load": "nf4", "model.lora_rank": 4}, "CUDA"),
    ({"training.optimizer": "adamw_8bit"}, "CUDA"),
])
def test_incompatible_combinations_are_infeasible_before_anything_runs(pipeline, monkeypatch, overrides, reason):
    monkeypatch.setattr(pipeline, "data", lambda ctx: pytest.fail("the trial started"))
    with pytest.raises(IncompatibleKnobs, match=reason):
        F.run_knobs(pipeline, overrides, CPU)


def test_distillation_without_a_teacher_is_infeasible(model_dir, csv_path):
    from pipelines.text_classification import TextClassificationPipeline

    opts = {**F.classification_options(model_dir, csv_path), "teacher": None}
    p = TextClassificationPipeline(TextClassificationPipeline.validate_options(opts))
    with pytest.raises(IncompatibleKnobs, match="pipeline.teacher"):
        F.run_knobs(p, {"training.kd_lambda": 0.5}, CPU)


def test_lora_matching_no_module_is_an_error(pipeline):
    with pytest.raises(KnobError, match="match no Linear"):
        F.run_knobs(pipeline, {"model.lora_rank": 4, "model.lora_targets": "no_such_proj"}, CPU)


def test_lora_on_named_modules_logs_trainable_parameters(pipeline):
    r = F.run_knobs(pipeline, {"model.lora_rank": 4, "model.lora_targets": "query,value"}, CPU)
    ev = r.verifications["model.lora_targets"]
    assert ev["targets"] == ["query", "value"]
    rank = r.verifications["model.lora_rank"]
    assert 0 < rank["trainable_parameters"] < rank["total_parameters"]


def test_user_knob_from_the_experiment_file(tmp_path, model_dir, csv_path):
    from greenknobs.config import parse_experiment
    from greenknobs.meters.cpu_model import CpuModelMeter
    from greenknobs.pipeline import pipeline_class, run_trial

    raw = yaml.safe_load(f"""
name: user-knob
pipeline:
  name: "tests.user_knobs:ClassifierWithUserKnobs"
  model: "{model_dir}"
  dataset: {{path: "{csv_path}", text_column: body, label_column: topic}}
knobs:
  user.freeze_embeddings: {{class: "tests.user_knobs:FreezeEmbeddings", choices: [false, true]}}
  data.max_seq_len: 32
  system.threads: 1
  training.learning_rate: 1.0e-3
meter: cpu-model
""")
    exp = parse_experiment(raw, "user.yaml")
    pipe = pipeline_class(exp.pipeline)(exp.pipeline_options)
    results = {}
    for value in (False, True):
        knobs = [(s.knob, value if s.name == "user.freeze_embeddings" else s.default) for s in exp.knobs]
        results[value] = run_trial(pipe, knobs, CpuModelMeter(), CPU, 0).verifications["user.freeze_embeddings"]
    assert results[False]["embeddings_unchanged"] is False
    assert results[True]["embeddings_unchanged"] is True


# -- GPU power limit against a fake NVML (never a real one) ------------------------------------
@pytest.fixture
def fake_nvml(monkeypatch):
    from greenknobs.testing.fakes import install_fake_power_nvml

    return lambda **kw: install_fake_power_nvml(monkeypatch, **kw)


GPU = Runtime(device="cuda", cpu_count=1, gpu_count=1)


class PowerPipeline:
    """Five phases around the power-limit knob; training records the limits in force the way the
    real training loop does (ml.train_loop.record_power_limits), then ``during`` runs."""

    @staticmethod
    def make(during=lambda nv: None):
        from greenknobs.ml.train_loop import record_power_limits
        from greenknobs.pipeline import Pipeline

        class Power(Pipeline):
            name, knobs, metrics, default_metric = "power", ("system.gpu_power_limit",), {"q": "maximize"}, "q"

            def data(self, ctx): ctx.apply_knobs()
            def model(self, ctx): ctx.apply_knobs()
            def system(self, ctx): ctx.apply_knobs()

            def training(self, ctx):
                ctx.apply_knobs()
                record_power_limits(ctx)
                during(ctx)

            def inference(self, ctx):
                ctx.apply_knobs()
                ctx.quality = {"validation": {"q": 1.0}, "test": {"q": 1.0}}

        return Power({})


def _power_trial(value, monkeypatch, during=lambda ctx: None):
    from greenknobs.knobs import get_knob
    from greenknobs.meters.cpu_model import CpuModelMeter
    from greenknobs.pipeline import execute_trial

    monkeypatch.setattr(Runtime, "synchronize", lambda self: None)  # no CUDA in this torch build
    return execute_trial(PowerPipeline.make(during), [(get_knob("system.gpu_power_limit"), value)], CpuModelMeter(),
                         GPU, seed=0)


def test_power_limit_sets_reads_back_and_restores(fake_nvml, monkeypatch):
    nv = fake_nvml()
    during = []
    result, ctx = _power_trial(0.5, monkeypatch, during=lambda ctx: during.append(nv.limit_mw[0]))
    assert during == [150_000]  # the cap was on while training ran
    assert result.verifications["system.gpu_power_limit"]["limits_in_training_w"] == {0: 150.0}
    assert nv.limit_mw[0] == 300_000 and ctx.observed.get("gpu_power_restored_w") == {0: 300.0}


def test_power_limit_refuses_without_permission(fake_nvml):
    from greenknobs.knobs import get_knob

    nv = fake_nvml(permitted=False)
    with pytest.raises(IncompatibleKnobs, match="not applied.*root"):
        get_knob("system.gpu_power_limit").check(0.7, GPU)
    assert nv.limit_mw[0] == 300_000


def test_power_limit_that_silently_did_not_apply_fails_verify(fake_nvml, monkeypatch):
    nv = fake_nvml(honours_set=False)
    with pytest.raises(KnobError, match="300.0 W, target 150.0 W"):
        _power_trial(0.5, monkeypatch)
    assert nv.limit_mw[0] == 300_000


def test_power_limit_refuses_without_a_gpu():
    from greenknobs.knobs import get_knob

    with pytest.raises(IncompatibleKnobs, match="needs an NVIDIA GPU"):
        get_knob("system.gpu_power_limit").check(0.7, CPU)


def test_bad_values_name_the_key():
    from greenknobs.config import _knob_setting
    from greenknobs.errors import ConfigError

    for name, spec in (("training.kd_lambda", {"default": 1.5}), ("inference.early_exit", {"choices": ["off", 2.0]}),
                       ("model.lora_rank", {"default": -1}), ("system.gpu_power_limit", {"default": 3.0})):
        with pytest.raises(ConfigError) as err:
            _knob_setting(name, spec)
        assert err.value.key.startswith(f"knobs.{name}")


def test_tokenizer_cache_hits_on_the_second_trial(pipeline, tmp_path, monkeypatch):
    monkeypatch.setenv("GREENKNOBS_CACHE_DIR", str(tmp_path))
    first = F.run_knobs(pipeline, {"data.tokenizer_cache": True}, CPU).verifications["data.tokenizer_cache"]
    second = F.run_knobs(pipeline, {"data.tokenizer_cache": True}, CPU).verifications["data.tokenizer_cache"]
    assert first["mode"] == "miss" and first["tokenized"] > 0
    assert second["mode"] == "hit" and second["tokenized"] == 0 and second["hits"] == first["tokenized"] + first["hits"]


def test_early_exit_logs_its_exit_rate(pipeline):
    r = F.run_knobs(pipeline, {"training.exit_head_depth": 0.5, "inference.early_exit": 0.8, "training.epochs": 2}, CPU)
    ev = r.verifications["inference.early_exit"]
    assert ev["block"] == 2 and ev["rows"] == ev["exited"] + ev["full"]
    assert 0.0 <= ev["exit_rate"] <= 1.0 and r.phases["inference"].details["exit_rate"] == ev["exit_rate"]


def test_inference_seq_len_that_cuts_nothing_is_infeasible(pipeline):
    with pytest.raises(IncompatibleKnobs, match="cuts nothing"):
        F.run_knobs(pipeline, {"inference.seq_len": 64}, CPU)  # the harness truncates at 32 already


def test_power_limit_is_restored_when_the_trial_fails_early(fake_nvml, monkeypatch):
    """release() runs in the runner's finally: a trial that dies in training leaves no cap behind."""
    from greenknobs.knobs import get_knob
    from greenknobs.meters.cpu_model import CpuModelMeter
    from greenknobs.pipeline import Pipeline, run_trial

    class DiesInTraining(Pipeline):
        name, knobs, metrics, default_metric = "dies", ("system.gpu_power_limit",), {"q": "maximize"}, "q"

        def data(self, ctx): ctx.apply_knobs()
        def model(self, ctx): ctx.apply_knobs()
        def system(self, ctx): ctx.apply_knobs()
        def inference(self, ctx): ctx.apply_knobs()

        def training(self, ctx):
            ctx.apply_knobs()
            assert nv.limit_mw[0] == 150_000  # the cap is on while the trial runs
            raise RuntimeError("out of memory")

    monkeypatch.setattr(Runtime, "synchronize", lambda self: None)  # no CUDA in this torch build
    nv = fake_nvml()
    with pytest.raises(RuntimeError, match="out of memory"):
        run_trial(DiesInTraining({}), [(get_knob("system.gpu_power_limit"), 0.5)], CpuModelMeter(), GPU, seed=0)
    assert nv.limit_mw[0] == 300_000
