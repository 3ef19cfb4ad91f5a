"""The knob contract (greenknobs.testing.knob_contract), parametrised over every registered knob.

Each knob runs inside the real built-in pipeline that honours it, on a tiny model: a knob added
to the registry is tested here automatically.
"""

from __future__ import annotations

import os

import pytest

from greenknobs.knobs import REGISTRY, all_knobs
from greenknobs.ml import compile as gk_compile
from greenknobs.runtime import Runtime
from greenknobs.testing import fixtures as F
from greenknobs.testing import knob_contract as C

# acts only on a language model: teacher-entropy weighting of per-token distillation, and
# Prune&Comp compensation, which needs a pre-norm model (the classifier is a post-norm BERT)
ON_LANGUAGE_MODEL = {"model.healing_entropy_weight", "model.healing_lambda", "model.healing_temperature",
                     "model.pruning_compensation"}
# only a fresh process may change it (PyTorch allows one set_num_interop_threads per process)
SEPARATE_PROCESS = {"system.interop_threads"}
KNOBS = [k.name for k in all_knobs()]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    from pipelines.text_classification import TextClassificationPipeline

    root = tmp_path_factory.mktemp("contract")
    os.environ["GREENKNOBS_CACHE_DIR"] = str(root / "cache")
    opts = TextClassificationPipeline.validate_options(F.classification_options(
        F.make_tiny_model_dir(root / "tiny", layers=4), F.make_tiny_texts_with_duplicates(root / "texts.csv")))
    return TextClassificationPipeline(opts)


@pytest.fixture(scope="module")
def lm_harness():
    from pipelines.causal_lm import CausalLMPipeline

    return CausalLMPipeline(CausalLMPipeline.validate_options(dict(F.LM_OPTIONS)))


# image-classification on 300 digits at 12 x 12, 4 tiny stages (a stage per channel-pruning knob): ~1 s a trial
VISION_OPTIONS = {"max_examples": 300, "widths": [4, 8, 8, 8], "blocks": [2, 2, 1, 1], "calibration_samples": 32}
VISION_BASELINE = {"data.input_resolution": 12}


@pytest.fixture(scope="module")
def vision_harness():
    from pipelines.image_classification import ImageClassificationPipeline

    return ImageClassificationPipeline(ImageClassificationPipeline.validate_options(dict(VISION_OPTIONS)))


@pytest.fixture(scope="module")
def runtime():
    return Runtime(device="cpu", cpu_count=len(os.sched_getaffinity(0)), gpu_count=0)


@pytest.fixture(autouse=True)
def fast_compiler(monkeypatch):
    # same graph capture and counting backend, no C++ build: Inductor itself takes ~50 s here
    monkeypatch.setitem(gk_compile.BACKENDS, "inductor", gk_compile.BACKENDS["aot_eager"])


_runs: dict = {}


def _with_baseline(pipeline, overrides):
    if pipeline.name == "image-classification":  # small images: its own tiny baseline
        return {**{k: v for k, v in VISION_BASELINE.items() if k not in overrides}, **overrides}
    return dict(overrides)


def cached_run(pipeline, overrides, runtime):
    """Baselines repeat across knobs (same companions): run each distinct trial once per session."""
    import torch

    overrides = _with_baseline(pipeline, overrides)
    key = (pipeline.name, *sorted(overrides.items(), key=repr))
    if key not in _runs:
        torch.set_num_threads(runtime.cpu_count)
        _runs[key] = F.run_knobs_with_context(pipeline, dict(overrides), runtime)
    return _runs[key]


def fresh_run(pipeline, overrides, runtime):
    """The mutant's trial: never from the cache (its knob class is switched off while it runs)."""
    import torch

    torch.set_num_threads(runtime.cpu_count)
    return F.run_knobs_with_context(pipeline, _with_baseline(pipeline, overrides), runtime)


def _pipeline_for(name, harness, lm_harness, vision_harness):
    if name in ON_LANGUAGE_MODEL or name not in harness.knobs:
        if name not in lm_harness.knobs and name in vision_harness.knobs:  # the vision knobs
            return vision_harness
        return lm_harness
    return harness


@pytest.mark.parametrize("name", KNOBS)
def test_every_knob_describes_itself(name):
    C.check_fields(name)


@pytest.mark.parametrize("name", [k for k in KNOBS if k not in SEPARATE_PROCESS])  # those: test_interop_threads_in_a_fresh_process
def test_every_knob_takes_effect_or_is_refused_here(name, harness, lm_harness, vision_harness, runtime):
    pipeline = _pipeline_for(name, harness, lm_harness, vision_harness)
    if name not in pipeline.knobs:
        pytest.skip(f"{name} is not used by a built-in pipeline")
    C.check_knob(name, pipeline, runtime, run=cached_run, fresh_run=fresh_run)


def test_baseline_values_change_nothing(harness, runtime):
    import torch

    default_threads = REGISTRY["system.threads"].default
    torch.set_num_threads(default_threads)  # so that the threads knob's baseline meets its own default
    C.check_baseline_changes_nothing(harness, runtime, overrides={"system.threads": default_threads})


def test_a_knob_that_acts_at_its_baseline_through_a_hook_is_caught(harness, runtime, monkeypatch):
    """The baseline check watches the hooks run(trial) code reaches knobs by, not only apply():
    a serving-precision knob that nudges the handed model's weights at its fp32 baseline -- which
    its own verification (the output dtype) cannot see -- is named."""
    import torch

    from greenknobs.knobs.inference import InferencePrecision

    acts_anyway = InferencePrecision.handed

    def nudges_at_baseline(self, kind, obj, value, trial):
        out = acts_anyway(self, kind, obj, value, trial)
        if kind == "model":
            with torch.no_grad():
                next(obj.parameters()).add_(1e-3)
        return out

    monkeypatch.setattr(InferencePrecision, "handed", nudges_at_baseline)
    torch.set_num_threads(REGISTRY["system.threads"].default)
    with pytest.raises(AssertionError, match="inference.precision"):
        C.check_baseline_changes_nothing(harness, runtime, overrides={"system.threads": REGISTRY["system.threads"].default})


def test_gpu_only_values_refuse_on_cpu(harness, runtime):
    from greenknobs.errors import IncompatibleKnobs

    for name, value in (("training.precision", "fp16"), ("model.weight_dtype", "fp16"),
                        ("inference.precision", "fp16"), ("training.optimizer", "adamw_8bit")):
        with pytest.raises(IncompatibleKnobs):
            F.run_knobs(harness, {name: value}, runtime)


def test_interop_threads_in_a_fresh_process(tmp_path):
    """set_num_interop_threads works once per process, before parallel work: a real tiny trial in a
    child process, with the evidence recorded by the training loop as the first forward runs."""
    import subprocess
    import sys

    code = """
import torch
from pathlib import Path
from greenknobs.runtime import Runtime
from greenknobs.testing import fixtures as F
from pipelines.text_classification import TextClassificationPipeline
root = Path({root!r})
opts = F.classification_options(F.make_tiny_model_dir(root / "m"), F.make_tiny_csv(root / "t.csv"))
pipe = TextClassificationPipeline(TextClassificationPipeline.validate_options(opts))
want = 1 if torch.get_num_interop_threads() != 1 else 2
if {mutant}:  # the mechanism off: nothing sets the pool, and verification must say so
    from greenknobs.errors import KnobError
    from greenknobs.knobs import REGISTRY
    REGISTRY["system.interop_threads"].acting = False
    try:
        F.run_knobs(pipe, {{"system.interop_threads": want}}, Runtime("cpu", 2, 0))
        print("mutant passed")
    except KnobError as exc:
        print("mutant failed:", exc)
else:
    r = F.run_knobs(pipe, {{"system.interop_threads": want}}, Runtime("cpu", 2, 0))
    print("seen", r.verifications["system.interop_threads"]["threads_in_training"], "want", want)
"""
    root = os.path.dirname(os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", code.format(root=str(tmp_path), mutant=False)], capture_output=True, text=True, timeout=300,
                         cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    seen, want = out.stdout.split()[1], out.stdout.split()[3]
    assert seen == want
    mutant = subprocess.run([sys.executable, "-c", code.format(root=str(tmp_path), mutant=True)], capture_output=True, text=True,
                            timeout=300, cwd=root)
    assert mutant.returncode == 0, mutant.stderr[-3000:]
    assert "mutant failed: system.interop_threads did not take effect" in mutant.stdout, mutant.stdout
