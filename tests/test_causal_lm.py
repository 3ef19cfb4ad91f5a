"""The causal-LM pipeline: perplexity as a minimised objective, distillation from a saved model."""

from __future__ import annotations

import math

import pytest

from greenknobs.errors import ConfigError, IncompatibleKnobs
from greenknobs.runtime import Runtime
from greenknobs.testing import fixtures as F

CPU = Runtime(device="cpu", cpu_count=1, gpu_count=0)


def lm(**options):
    from pipelines.causal_lm import CausalLMPipeline

    return CausalLMPipeline(CausalLMPipeline.validate_options({**F.LM_OPTIONS, **options}))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A baseline trial that also saves its model: the 'pre-trained' base for pruning and distillation."""
    out = tmp_path_factory.mktemp("lm") / "base"
    result = F.run_knobs(lm(save_model=str(out)), {"training.epochs": 4, "training.learning_rate": 1e-2}, CPU)
    return out, result


def test_perplexity_beats_the_unigram_model(trained):
    _, r = trained
    assert set(r.quality) == {"validation", "test"}
    for q in r.quality.values():
        assert set(q) == {"perplexity", "unigram_perplexity"} and q["perplexity"] > 1.0 and q["unigram_perplexity"] < 500
    for q in r.quality.values():  # clearly below the unigram model, on both splits
        assert q["perplexity"] < 0.95 * q["unigram_perplexity"]
    assert r.verifications["training.epochs"]["passes"] == 4
    assert r.samples["inference"] > 0


def test_pipeline_declares_a_minimised_metric():
    from greenknobs.config import load_experiment

    exp = load_experiment("experiments/bbc-news-lm.yaml")
    assert exp.objectives.quality_metric == "perplexity" and exp.objectives.quality_direction == "minimize"
    assert exp.quick_variant().pipeline_options["max_examples"] == 300


def test_distillation_from_the_unpruned_model(trained):
    base, _ = trained
    r = F.run_knobs(lm(model=str(base)), {"model.layers_removed": 2, "training.kd_lambda": 0.5}, CPU)
    kd = r.verifications["training.kd_lambda"]
    assert kd["teacher_forwards"] == r.verifications["training.grad_accumulation"]["micro_batches"] > 0
    assert kd["kd_loss_mean"] > 0
    assert kd["lambda_seen"] == pytest.approx(0.5, abs=1e-3) and kd["temperature_seen"] == pytest.approx(2.0, rel=1e-3)
    assert r.verifications["model.layers_removed"]["blocks_ran"]["training"] == 2
    assert kd["teacher_parameters"] > r.verifications["model.layers_removed"]["params_after"]  # the unpruned one


def test_distillation_needs_a_trained_teacher():
    with pytest.raises(IncompatibleKnobs, match="trained teacher"):
        F.run_knobs(lm(), {"training.kd_lambda": 0.5}, CPU)


def test_inference_seq_len_sets_the_evaluation_block():
    r = F.run_knobs(lm(), {"inference.seq_len": 16}, CPU)
    assert r.verifications["inference.seq_len"]["inference_block_len"] == 16
    assert math.isfinite(r.quality["validation"]["perplexity"]) and math.isfinite(r.quality["test"]["perplexity"])


def test_lora_heals_a_saved_model(trained):
    base, _ = trained
    r = F.run_knobs(lm(model=str(base)), {"model.lora_rank": 4, "model.lora_targets": "attention_mlp"}, CPU)
    ev = r.verifications["model.lora_rank"]
    assert ev["lora_modules"] == 4 * 7 and ev["trainable_share"] < 0.5  # q, k, v, o, gate, up, down per block


def test_bad_options_name_the_key():
    from pipelines.causal_lm import CausalLMPipeline

    for opts, key in (({"heads": 3}, "pipeline.heads"), ({"vocab_size": 10}, "pipeline.vocab_size"),
                      ({"model": "/nonexistent"}, "pipeline.model"), ({"colour": 1}, "pipeline.colour")):
        with pytest.raises(ConfigError) as err:
            CausalLMPipeline.validate_options({**F.LM_OPTIONS, **opts})
        assert err.value.key == key


def test_data_knobs_on_the_language_model(tmp_path, monkeypatch):
    monkeypatch.setenv("GREENKNOBS_CACHE_DIR", str(tmp_path))
    r = F.run_knobs(lm(), {"data.dedup": "near", "data.train_fraction": 0.5, "data.tokenizer_cache": True}, CPU)
    assert r.verifications["data.dedup"]["training_texts_after"] > 0
    frac = r.verifications["data.train_fraction"]
    assert frac["train_examples_used"] == round(frac["train_examples_available"] * 0.5)
    assert r.verifications["data.tokenizer_cache"]["mode"] == "miss"
