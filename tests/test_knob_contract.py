"""One contract, every registered knob.

For each knob: (1) a non-default value, applied inside the real pipeline on a tiny model, changes
the evidence its ``verify`` reads back (and verify accepts it); (2) applying the baseline value
changes nothing on the model, the data or the runtime; (3) knobs that need hardware this machine
lacks refuse in ``check`` with a reason instead of running. A knob class may carry
``contract_example = (value, {other_knob: value})`` to tell this test which value to try.
"""

from __future__ import annotations

import os

import pytest
import torch

from greenknobs import compile as gk_compile
from greenknobs import probes
from greenknobs.errors import IncompatibleKnobs
from greenknobs.knobs import all_knobs
from greenknobs.knobs.base import REGISTRY
from greenknobs.runtime import Runtime
from tests import knob_harness as H

# value to try, and other knobs it needs (a LoRA alpha needs a LoRA rank, ...)
EXAMPLES = {
    "data.train_fraction": (0.5, {}),
    "data.max_seq_len": (16, {}),
    "data.dedup": ("near", {}),
    "data.padding": ("length_bucketed", {}),
    "data.tokenizer_cache": (True, {}),
    "model.layers_removed": (1, {}),
    "model.weight_dtype": ("bf16", {}),
    "model.attention": ("eager", {}),
    "model.lora_rank": (4, {}),
    "model.lora_alpha": (32, {"model.lora_rank": 4}),
    "model.lora_targets": ("attention_mlp", {"model.lora_rank": 4}),
    "system.threads": (2, {}),  # the harness baseline runs on 1
    "system.train_batch_size": (8, {}),
    "system.dataloader_workers": (1, {}),
    "system.compile": ("inductor", {}),
    "training.epochs": (2, {}),
    "training.learning_rate": (3e-4, {}),
    "training.precision": ("bf16", {}),
    "training.gradient_checkpointing": (True, {}),
    "training.grad_accumulation": (2, {}),
    "training.optimizer": ("sgd", {}),
    "training.early_stopping_patience": (1, {"training.epochs": 3}),
    "training.freeze_layers": (2, {}),
    "training.kd_lambda": (0.5, {}),
    "training.kd_temperature": (4.0, {"training.kd_lambda": 0.5}),
    "training.exit_head_depth": (0.5, {}),
    "inference.batch_size": (8, {}),
    "inference.quantization": ("dynamic_int8", {}),
    "inference.precision": ("bf16", {}),
    "inference.compile": ("inductor", {}),
    "inference.seq_len": (8, {}),
    "inference.early_exit": (0.5 + 0.45, {"training.exit_head_depth": 0.5}),
}
# pruning knobs (issue #5) act only when layers are removed; a class's own ``contract_example`` wins
_PRUNE = {"model.layers_removed": 1}
_HEAL = {"model.layers_removed": 1, "model.healing_steps": 2}
PRUNING_EXAMPLES = {
    "model.pruning_method": ("block_influence", _PRUNE),
    "model.pruning_iterative": (True, {"model.layers_removed": 2, "model.pruning_method": "block_influence"}),
    "model.pruning_compensation": (True, _PRUNE),
    "model.calibration_samples": (8, {**_PRUNE, "model.pruning_method": "block_influence"}),
    "model.healing_steps": (2, _PRUNE),
    "model.healing_lambda": (0.25, _HEAL),
    "model.healing_temperature": (4.0, _HEAL),
    "model.healing_entropy_weight": (True, _HEAL),
}
# acts only on a language model (teacher-entropy weighting of per-token distillation)
# (and Prune&Comp compensation, which needs a pre-norm model; the classifier is a post-norm BERT)
ON_LANGUAGE_MODEL = {"model.healing_entropy_weight", "model.healing_lambda", "model.healing_temperature",
                     "model.pruning_compensation"}
# needs hardware this machine lacks: check() must refuse with a reason (GPU tests run where one exists)
CPU_REFUSES = {
    "model.quantized_load": ("nf4", {"model.lora_rank": 4}, "CUDA"),
    "system.gpu_power_limit": (0.7, {}, "GPU"),
}
# only a fresh process may change it (PyTorch allows one set_num_interop_threads per process)
SEPARATE_PROCESS = {"system.interop_threads"}

KNOBS = [k.name for k in all_knobs()]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    from pipelines.text_classification import TextClassificationPipeline

    root = tmp_path_factory.mktemp("contract")
    os.environ["GREENKNOBS_CACHE_DIR"] = str(root / "cache")
    opts = TextClassificationPipeline.validate_options(
        H.classification_options(H.write_tiny_classifier(root / "tiny"), H.write_texts(root / "texts.csv")))
    return TextClassificationPipeline(opts)


@pytest.fixture(scope="module")
def lm_harness():
    from pipelines.causal_lm import CausalLMPipeline

    return CausalLMPipeline(CausalLMPipeline.validate_options(dict(H.LM_OPTIONS)))


@pytest.fixture(scope="module")
def runtime():
    return Runtime(device="cpu", cpu_count=len(os.sched_getaffinity(0)), gpu_count=0)


@pytest.fixture(autouse=True)
def fast_compiler(monkeypatch):
    # same graph capture and counting backend, no C++ build: Inductor itself takes ~50 s here
    monkeypatch.setitem(gk_compile.BACKENDS, "inductor", gk_compile.BACKENDS["aot_eager"])


_runs: dict = {}


def cached_run(harness, runtime, overrides: dict):
    key = (harness.name, *sorted(overrides.items()))
    if key not in _runs:
        torch.set_num_threads(runtime.cpu_count)
        _runs[key] = H.run(harness, dict(overrides), runtime)
    return _runs[key]


def _example(name: str):
    cls = REGISTRY[name]
    if hasattr(cls, "contract_example"):
        return cls.contract_example
    if name in EXAMPLES or name in PRUNING_EXAMPLES:
        return EXAMPLES.get(name) or PRUNING_EXAMPLES[name]
    space = cls.space
    value = next(c for c in space.choices if c != cls.default) if space.choices else space.high
    return value, {}


def _evidence(result, name):
    return {k: v for k, v in result.verifications[name].items() if k != "value"}


@pytest.mark.parametrize("name", KNOBS)
def test_every_knob_has_the_contract_fields(name):
    info = REGISTRY[name]().info()
    for field in ("phase", "default", "space", "devices", "verifies", "description"):
        assert info[field] not in (None, ""), f"{name} lacks {field}"
    assert REGISTRY[name]().space.contains(REGISTRY[name].default) or name == "model.lora_targets"


@pytest.mark.parametrize("name", KNOBS)
def test_non_default_value_changes_the_evidence(name, harness, lm_harness, runtime):
    if name in CPU_REFUSES or name in SEPARATE_PROCESS:
        pytest.skip("covered by the refusal / separate-process tests")
    if name in ON_LANGUAGE_MODEL or name not in harness.knobs:
        harness = lm_harness
    if name not in harness.knobs:
        pytest.skip(f"{name} is not used by a built-in pipeline")
    value, companions = _example(name)
    before = cached_run(harness, runtime, companions)
    after = cached_run(harness, runtime, {**companions, name: value})
    assert after.verifications[name]["value"] == value
    assert _evidence(after, name) != _evidence(before, name), f"{name}={value!r} changed nothing verify reads"


def test_baseline_values_change_nothing(harness, runtime, monkeypatch):
    """Wrap every knob's apply: with the baseline value it may write settings and evidence, nothing else."""
    changed = {}

    def state(ctx):
        model = getattr(ctx, "model", None)
        return (probes.checksum(model) if model is not None else None,
                tuple(type(m).__name__ for m in model.modules()) if model is not None else None,
                [id(r) for r in getattr(ctx, "train", [])], torch.get_num_threads(), torch.get_num_interop_threads())

    for name in harness.knobs:
        cls = REGISTRY[name]
        original = cls.apply

        def wrapped(self, ctx, value, _orig=original, _name=name):
            before = state(ctx)
            _orig(self, ctx, value)
            if state(ctx) != before:
                changed[_name] = value

        monkeypatch.setattr(cls, "apply", wrapped)
    default_threads = REGISTRY["system.threads"].default
    torch.set_num_threads(default_threads)  # so that the threads knob's baseline meets its own default
    result = H.run(harness, {"system.threads": default_threads}, runtime)
    assert not changed, f"baseline values changed the trial: {changed}"
    assert set(result.verifications) == set(harness.knobs)


@pytest.mark.parametrize("name", sorted(CPU_REFUSES))
def test_hardware_knobs_refuse_on_cpu(name, harness, runtime):
    value, companions, word = CPU_REFUSES[name]
    with pytest.raises(IncompatibleKnobs, match=word):
        H.run(harness, {**companions, name: value}, runtime)


def test_gpu_only_values_refuse_on_cpu(harness, runtime):
    for name, value in (("training.precision", "fp16"), ("model.weight_dtype", "fp16"),
                        ("inference.precision", "fp16"), ("training.optimizer", "adamw_8bit")):
        with pytest.raises(IncompatibleKnobs):
            H.run(harness, {name: value}, runtime)


def test_interop_threads_in_a_fresh_process():
    """set_num_interop_threads works once per process, before parallel work: prove it in a child."""
    import subprocess
    import sys

    code = ("import torch; from greenknobs.knobs import get_knob; from greenknobs.context import TrialContext;"
            "from greenknobs.runtime import Runtime; k = get_knob('system.interop_threads');"
            "ctx = TrialContext(Runtime('cpu', 2, 0), 0); k.apply(ctx, 1);"
            "ctx.observed.record('interop_threads_in_training', torch.get_num_interop_threads());"
            "print(k.verify(ctx, 1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    assert "'interop_threads_in_training': 1" in out.stdout
