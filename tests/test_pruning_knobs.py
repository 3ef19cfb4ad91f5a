"""The pruning knobs inside a real trial: order within the model phase, verify evidence, refusals."""

from __future__ import annotations

import pytest
import torch

from greenknobs.errors import KnobError
from greenknobs.knobs import get_knob
from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.ml import hf
from greenknobs.ml.pruning.compensation import CompensationNotApplicable
from greenknobs.pipeline import Pipeline, run_trial

PRUNING_KNOBS = ("model.pruning_method", "model.pruning_iterative", "model.pruning_compensation",
                 "model.calibration_samples", "model.healing_steps", "model.healing_lambda",
                 "model.healing_temperature", "model.healing_entropy_weight")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


class TinyLMPipeline(Pipeline):
    """Just enough pipeline for the model phase to prune a tiny LLaMA on token rows."""

    name = "tiny-lm"
    knobs = ("model.layers_removed", *PRUNING_KNOBS)
    metrics = {"loss": "minimize"}
    default_metric = "loss"
    make = staticmethod(lambda: hf.tiny_llama_lm(layers=6))

    def data(self, ctx):
        g = torch.Generator().manual_seed(0)
        ctx.train = [{"input_ids": torch.randint(1, 100, (12,), generator=g).tolist(), "label": i % 3} for i in range(20)]
        ctx.validation = ctx.train[:8]
        ctx.pad_id = 0
        ctx.apply_knobs()

    def model(self, ctx):
        ctx.model = self.make()
        ctx.apply_knobs()

    def system(self, ctx):
        ctx.apply_knobs()

    def training(self, ctx):
        ctx.apply_knobs()
        ctx.model.train()  # one training forward: where the knobs' hooks see which blocks ran
        ctx.model(input_ids=torch.tensor([ctx.train[0]["input_ids"]]))
        ctx.trained_model = ctx.model

    def inference(self, ctx):
        ctx.apply_knobs()
        ctx.quality = {"validation": {"loss": 0.0}, "test": {"loss": 0.0}}


def _trial(values: dict, pipeline=None):
    # layers_removed first on purpose: the settings knobs must still apply before it
    knob_values = [(get_knob(name), value) for name, value in values.items()]
    return run_trial(pipeline or TinyLMPipeline({}), knob_values, CpuModelMeter(), _runtime(), seed=0)


def _runtime():
    from greenknobs.runtime import Runtime

    return Runtime(device="cpu", cpu_count=1, gpu_count=0)


def test_settings_knobs_apply_before_layers_removed_and_verify():
    result = _trial({"model.layers_removed": 2, "model.pruning_method": "block_influence",
                     "model.pruning_iterative": True, "model.pruning_compensation": True,
                     "model.calibration_samples": 12, "model.healing_steps": 3,
                     "model.healing_entropy_weight": True})
    v = result.verifications
    assert v["model.layers_removed"]["blocks_ran"]["training"] == 4
    report = v["model.layers_removed"]["pruning"]
    assert report["method"] == "block_influence" and report["iterative"] and len(report["rounds"]) == 2
    assert len(report["alphas"]) == 2 and report["calibration_samples"] == 12
    assert report["selection_energy"]["energy_j"] > 0 and report["selection_energy"]["meter"] == "cpu-model"
    assert report["healing"]["steps_taken"] == 3 and report["healing"]["energy"]["energy_j"] > 0
    assert v["model.pruning_method"]["removed"] == report["removed"]
    assert v["model.pruning_compensation"]["alphas"] == report["alphas"]
    assert v["model.healing_steps"]["kd_loss_after"] is not None
    assert v["model.healing_entropy_weight"]["entropy_weighted_seen"] is True
    assert result.phases["model"].details["pruning"]["method"] == "block_influence"


def test_layers_removed_alone_keeps_the_old_top_n_behaviour():
    result = _trial({"model.layers_removed": 1})
    assert result.verifications["model.layers_removed"]["removed_indices"] == [5]


def test_settings_without_layers_removed_fail_verification():
    with pytest.raises(KnobError, match="layers_removed is not part"):
        _trial({"model.pruning_method": "angular"})


def test_settings_with_zero_layers_removed_are_reported_not_in_effect():
    result = _trial({"model.layers_removed": 0, "model.pruning_method": "angular"})
    assert result.verifications["model.pruning_method"]["in_effect"] is False


def test_compensation_on_a_post_norm_classifier_fails_the_trial_loudly():
    class TinyBertPipeline(TinyLMPipeline):
        make = staticmethod(lambda: hf.tiny_bert_classifier(layers=4))

    with pytest.raises(CompensationNotApplicable, match="post-norm"):
        _trial({"model.layers_removed": 1, "model.pruning_compensation": True}, TinyBertPipeline({}))


def test_pruning_method_space_lists_every_method():
    assert set(get_knob("model.pruning_method").space.choices) == {
        "top", "bottom", "block_influence", "angular", "iterative_loss", "iterative_metric", "learned_mask", "merge"}
    assert all(get_knob(n).order < get_knob("model.layers_removed").order for n in PRUNING_KNOBS)
