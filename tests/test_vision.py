"""The image-classification pipeline and its mechanisms: structural channel pruning (smaller tensors,
the expected parameter count, outputs unchanged when the pruned channels were zero), residual-block
removal (shapes consistent), FLOPs counted on the forward pass, static int8, an image folder, the
shared knobs acting on the objects this pipeline hands to its trial, every knob failing with its
mechanism switched off, and a quick search of experiments/digits-cnn.yaml end to end."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from greenknobs.ml.vision import count, prune, quant
from greenknobs.ml.vision.resnet import SmallResNet, blocks, inner_widths, removable_count
from pipelines.image_classification import ImageClassificationPipeline as P

ROOT = Path(__file__).resolve().parents[1]
TINY = {"max_examples": 300, "widths": [4, 8, 8, 8], "blocks": [2, 2, 1, 1], "calibration_samples": 32}
TINY_KNOBS = {"data.input_resolution": 12}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm statistics and affine terms, as training leaves them (fresh ones are 1 and 0)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean.data = torch.randn(n, generator=g) * 0.1
            m.running_var.data = torch.rand(n, generator=g) + 0.5
    return model.eval()


def conv_params(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def expected_parameters(in_ch: int, classes: int, widths, inner) -> int:
    """Parameters of a SmallResNet whose block inner widths are ``inner[stage][block]``."""
    total = conv_params(in_ch, widths[0], 3) + 2 * widths[0]
    cin = widths[0]
    for s, width in enumerate(widths):
        for b, mid in enumerate(inner[s]):
            total += conv_params(cin, mid, 3) + 2 * mid + conv_params(mid, width, 3) + 2 * width
            if cin != width or (s > 0 and b == 0):
                total += conv_params(cin, width, 1) + 2 * width
            cin = width
    return total + cin * classes + classes


# -- channel pruning ---------------------------------------------------------------------------------
def test_channel_pruning_gives_a_smaller_model_with_the_expected_parameter_count():
    torch.manual_seed(0)
    model = trained_like(SmallResNet(1, 10, [8, 16, 32], [2, 2, 2]))
    x = torch.randn(4, 1, 16, 16)
    assert count.parameter_count(model) == expected_parameters(1, 10, [8, 16, 32], [[8, 8], [16, 16], [32, 32]])
    dense = count.measure(model, x)
    rep = prune.prune_channels(model, {1: 0.5, 2: 0.25, 3: 0.75}, "l1_norm")
    inner = [[4, 4], [12, 12], [8, 8]]
    assert inner_widths(model) == {"s1.b0": 4, "s1.b1": 4, "s2.b0": 12, "s2.b1": 12, "s3.b0": 8, "s3.b1": 8}
    assert count.parameter_count(model) == expected_parameters(1, 10, [8, 16, 32], inner)
    assert {b: v["after"] for b, v in rep.items()} == inner_widths(model)
    # structural: the tensors themselves are smaller, and so is the work
    for _, block in blocks(model):
        assert block.conv1.weight.shape[0] == block.bn1.weight.shape[0] == block.conv2.weight.shape[1]
        assert block.bn1.running_mean.shape[0] == block.conv1.out_channels
    after = count.measure(model, x)
    assert after["block_widths"] == inner_widths(model)
    assert after["macs_per_image"] < dense["macs_per_image"] and after["flops_per_image"] == 2 * after["macs_per_image"]
    out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    loss = out.logsumexp(-1).sum()
    loss.backward()  # it also trains


@pytest.mark.parametrize("criterion", prune.CRITERIA)
def test_pruned_model_equals_unpruned_when_pruned_channels_are_zero(criterion):
    """Zero the channels a criterion drops (bn1 scale and shift 0: relu(0) = 0 feeds conv2): the pruned
    model computes exactly what the unpruned one does."""
    torch.manual_seed(1)
    model = trained_like(SmallResNet(1, 10, [8, 16, 32], [2, 2, 2]))
    x = torch.randn(6, 1, 16, 16)
    ratios = {1: 0.5, 2: 0.5, 3: 0.25}
    scores = prune.channel_scores(model, criterion, x)
    for name, block in blocks(model):
        k = prune.kept_channels(block.inner_width, ratios[int(name[1])])
        drop = torch.ones(block.inner_width, dtype=torch.bool)
        drop[torch.topk(scores[name], k).indices] = False
        with torch.no_grad():
            block.bn1.weight[drop] = 0.0
            block.bn1.bias[drop] = 0.0
    with torch.no_grad():
        reference = model(x)
    pruned_model = prune.prune_channels(model, ratios, criterion, x) and model
    with torch.no_grad():
        out = pruned_model(x)
    assert count.parameter_count(pruned_model) < expected_parameters(1, 10, [8, 16, 32], [[8, 8], [16, 16], [32, 32]])
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_criteria_keep_what_they_should():
    torch.manual_seed(2)
    model = trained_like(SmallResNet(1, 3, [4], [1]))
    block = model.stages[0]["b0"]
    with torch.no_grad():
        block.bn1.weight.copy_(torch.tensor([0.1, 2.0, 0.5, 1.0]))
        block.conv1.weight.mul_(0)
        block.conv1.weight[2] += 1.0
        block.conv1.weight[3] += 0.5
    assert prune.prune_channels(trained_like_copy(model), {1: 0.5}, "bn_gamma")["s1.b0"]["kept"] == [1, 3]
    assert prune.prune_channels(trained_like_copy(model), {1: 0.5}, "l1_norm")["s1.b0"]["kept"] == [2, 3]
    # filters 0 and 1 are all zero: their maps are the constant relu(bn shift) -- rank at most 1;
    # filters 2 and 3 see the image: rank > 1
    with torch.no_grad():
        block.bn1.running_mean.zero_()
        block.bn1.bias.zero_()
    ranked = prune.prune_channels(trained_like_copy(model), {1: 0.5}, "fmap_rank", torch.rand(8, 1, 8, 8) + 1.0)
    assert ranked["s1.b0"]["kept"] == [2, 3]


def trained_like_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


# -- block removal -------------------------------------------------------------------------------
def test_block_removal_keeps_shapes_consistent():
    torch.manual_seed(3)
    widths, depth = [8, 16, 32], [2, 2, 2]
    x = torch.randn(3, 1, 16, 16)
    base = trained_like(SmallResNet(1, 10, widths, depth))
    removable = [n for n, b in blocks(base) if b.removable]
    assert removable == ["s1.b0", "s1.b1", "s2.b1", "s3.b1"] and len(removable) == removable_count(depth)
    assert not [n for n, b in blocks(base) if not b.removable and n in ("s1.b0", "s1.b1")]

    def stage_shapes(model):
        shapes = []
        h = model.stem(x)
        for stage in model.stages:
            for block in stage.values():
                h = block(h)
            shapes.append(tuple(h.shape))
        return shapes

    with torch.no_grad():
        want = stage_shapes(base)
        for k in range(len(removable) + 1):
            for gone in itertools.combinations(removable, k):
                model = trained_like_copy(base)
                prune.remove_blocks(model, list(gone))
                assert stage_shapes(model) == want
                assert model(x).shape == (3, 10)
                assert sorted(n for n, _ in blocks(model)) == sorted(set(n for n, _ in blocks(base)) - set(gone))
    with pytest.raises(ValueError, match="projection shortcut"):
        prune.remove_blocks(trained_like_copy(base), ["s2.b0"])


def test_block_importance_removes_the_least_important():
    torch.manual_seed(4)
    model = trained_like(SmallResNet(1, 5, [8, 8], [2, 2]))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 5, (16,))
    rep = prune.prune_blocks(model, 2, x, y)
    scores = rep["scores"]
    assert set(scores) == {"s1.b0", "s1.b1", "s2.b1"}
    assert len(rep["removed"]) == 2
    assert max(scores[b] for b in rep["removed"]) <= min(s for b, s in scores.items() if b not in rep["removed"])
    assert sorted(n for n, _ in blocks(model)) == sorted({"s1.b0", "s1.b1", "s2.b0", "s2.b1"} - set(rep["removed"]))


@pytest.mark.parametrize("order", ["channels_first", "blocks_first"])
def test_hybrid_pruning_runs_both_steps_in_order(order):
    torch.manual_seed(5)
    model = trained_like(SmallResNet(1, 10, [8, 16, 32], [2, 2, 2]))
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,))
    rep = prune.hybrid_prune(model, {1: 0.5, 2: 0.5, 3: 0.5}, "bn_gamma", 2, order, x, y)
    steps = [s["step"] for s in rep["steps"]]
    assert steps == (["channels", "blocks"] if order == "channels_first" else ["blocks", "channels"])
    assert rep["steps"][-1]["parameters"] == count.parameter_count(model) < rep["before"]["parameters"]
    assert rep["steps"][0]["macs_per_image"] > rep["steps"][1]["macs_per_image"]
    if order == "blocks_first":  # channel pruning only touched survivors
        assert set(rep["channels"]) == {n for n, _ in blocks(model)}
    assert model(x).shape == (16, 10)


def test_flops_are_counted_on_the_forward_pass():
    model = SmallResNet(1, 10, [4, 8], [1, 1]).eval()
    rec = count.measure(model, torch.randn(2, 1, 8, 8))
    stem = 8 * 8 * 4 * 1 * 9
    s1 = 2 * (8 * 8 * 4 * 4 * 9)  # block s1.b0: two 3x3 convs 4 -> 4 at 8 x 8 (identity shortcut)
    s2 = 4 * 4 * 8 * 4 * 9 + 4 * 4 * 8 * 8 * 9 + 4 * 4 * 8 * 4  # stride 2 to 4 x 4, plus the 1x1 projection
    assert rec["macs_per_image"] == stem + s1 + s2 + 8 * 10
    assert rec["input_shape"] == [1, 8, 8] and rec["blocks"] == ["s1.b0", "s2.b0"]


def test_static_int8_quantises_the_convolutions_and_agrees_with_fp32():
    torch.manual_seed(6)
    model = trained_like(SmallResNet(1, 10, [8, 16], [2, 2]))
    x = torch.randn(64, 1, 12, 12)
    prune.remove_blocks(model, ["s1.b1"])
    prune.prune_channels(model, {1: 0.5, 2: 0.5}, "bn_gamma")
    q = quant.quantize_static_int8(model, x)
    with torch.inference_mode(), count.record_forward(q) as rec:
        out = q(x)
    summary = rec.summary()
    assert summary["convs_ran"] == summary["quantized_convs_ran"] > 0 and summary["conv_input_dtypes"] == ["torch.quint8"]
    assert summary["block_widths"] == inner_widths(model)  # block names survive the FX graph
    agree = (out.argmax(-1) == model(x).argmax(-1)).float().mean()
    assert agree >= 0.8
    assert count.parameter_count(model) > 0 and next(model.parameters()).dtype == torch.float32  # original untouched


# -- the pipeline -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline():

    return P(P.validate_options(dict(TINY)))


def run(pipeline, overrides, runtime):
    from greenknobs.testing import fixtures as F

    return F.run_knobs_with_context(pipeline, {**TINY_KNOBS, **overrides}, runtime)


def test_hybrid_trial_logs_parameters_and_flops_before_and_after(pipeline, cpu_runtime):
    result, ctx = run(pipeline, {"model.channel_prune_stage1": 0.5, "model.channel_prune_stage3": 0.5,
                                 "model.blocks_removed": 2, "model.channel_criterion": "fmap_rank",
                                 "training.finetune_epochs": 1, "inference.static_int8": True}, cpu_runtime)
    v = result.verifications
    assert v["model.channel_prune_stage1"]["inner_widths_after"] == {"s1.b0": 2, "s1.b1": 2} or \
        len(v["model.channel_prune_stage1"]["inner_widths_after"]) < 2  # a stage-1 block may have been removed
    removed = v["model.blocks_removed"]
    assert removed["blocks_before"] - removed["blocks_after"] == 2
    assert removed["parameters_after"] < removed["parameters_before"]
    assert removed["flops_per_image_after"] < removed["flops_per_image_before"]
    assert v["inference.static_int8"]["quantized_convs_ran"] == v["inference.static_int8"]["convs_ran"]
    assert v["training.finetune_epochs"]["parameters"] == removed["parameters_after"]
    steps = result.phases["training"].details["energy_breakdown"]
    assert {"dense", "pruning", "finetune"} <= set(steps) and steps["pruning"]["provenance"] == "modelled"
    assert set(result.quality) == {"validation", "test"}
    assert {"macro_f1", "accuracy", "trivial_macro_f1"} <= set(result.quality["test"])
    # test is served in the held-out window (outside the objective), by the int8 model validation was served by
    assert "test" not in result.phases and result.held_out is not None and result.held_out.energy_j > 0
    assert result.samples["inference"] == len(ctx.validation) and result.samples["test"] == len(ctx.test)
    assert set(v["system.threads"]) >= {"threads_in_training", "threads_in_inference", "threads_in_test"}
    assert v["inference.batch_size"]["largest"] == 32 and v["inference.batch_size"]["batches"] >= 2  # validation only
    # fine-tuning's peak rate: the dense optimizer's (as training.learning_rate set it) x finetune_lr_scale
    assert ctx.observed.get("finetune")["lr_first"] == pytest.approx(1e-3 * 0.1)


def test_structural_limits_are_refused_before_the_trial(pipeline, cpu_runtime):
    from greenknobs.errors import IncompatibleKnobs

    with pytest.raises(IncompatibleKnobs, match="identity shortcut"):
        run(pipeline, {"model.blocks_removed": 4}, cpu_runtime)  # blocks [2, 2, 1, 1]: 3 removable
    with pytest.raises(IncompatibleKnobs, match="needs"):  # inert: nothing pruned, nothing to fine-tune
        run(pipeline, {"training.finetune_epochs": 1}, cpu_runtime)

    two_stages = P(P.validate_options({**TINY, "widths": [4, 8], "blocks": [1, 1]}))
    with pytest.raises(IncompatibleKnobs, match="2 stages"):
        run(two_stages, {"model.channel_prune_stage3": 0.5}, cpu_runtime)


# system.threads: verified on this pipeline in every trial here (its evidence: the hybrid trial's test)
@pytest.mark.parametrize("name", ["data.train_fraction", "system.train_batch_size", "training.epochs",
                                  "training.learning_rate", "training.precision", "inference.batch_size"])
def test_shared_knobs_keep_their_contract_on_this_pipeline(name, pipeline, cpu_runtime):
    """Knobs the text pipelines also use act on the objects this pipeline hands to the trial (its
    model, DataLoaders, dense optimizer and epoch loop) and read their own hooks' evidence."""
    from greenknobs.testing import knob_contract as C

    C.check_knob(name, pipeline, cpu_runtime, run=lambda p, o, rt: run(p, o, rt))


@pytest.mark.parametrize("name", P.knobs)
def test_every_knob_fails_verification_with_its_mechanism_off(name, pipeline, cpu_runtime, monkeypatch):
    """The knob's mechanism switched off (``acting = False``: an object knob may not act, a setting
    knob's value reads as its default in this pipeline's code) while the trial's value is the
    contract's example: its verification must fail -- its evidence comes from the computation."""
    from greenknobs.errors import KnobError
    from greenknobs.knobs import REGISTRY
    from greenknobs.testing.knob_contract import example_of

    value, companions = example_of(name)
    monkeypatch.setattr(REGISTRY[name], "acting", False)
    with pytest.raises(KnobError, match=re.escape(f"{name} did not take effect")):
        run(pipeline, {**companions, name: value}, cpu_runtime)


def test_trials_are_deterministic(pipeline, cpu_runtime):
    """Seeded shuffling (the loaders' batch samplers), seeded calibration images: the same knob values
    give the same model and the same scores."""
    knobs = {"model.blocks_removed": 1, "training.finetune_epochs": 1, "system.train_batch_size": 32}
    (a, ctx_a), (b, ctx_b) = (run(pipeline, knobs, cpu_runtime) for _ in range(2))
    assert a.quality == b.quality
    assert ctx_a.observed.get("pruning") == ctx_b.observed.get("pruning")
    assert a.phases["training"].details["final_loss"] == b.phases["training"].details["final_loss"]


def test_the_trained_model_is_stored_and_served_again(pipeline, cpu_runtime, tmp_path):
    """Phase-output reuse: the state after training (the pruned model, the loaders and optimizer handed
    over, the evidence) is stored, and a trial that differs only in serving continues from it and
    scores what a trial that trains afresh scores."""
    from greenknobs.knobs import get_knob
    from greenknobs.meters.cpu_model import CpuModelMeter
    from greenknobs.phase_store import PhaseStore
    from greenknobs.pipeline import execute_trial
    from greenknobs.testing import fixtures as F

    store = PhaseStore(tmp_path / "reuse")

    def stored(overrides):
        values = {n: get_knob(n).default for n in pipeline.knobs}
        values.update({**{k: v for k, v in F.TINY_BASELINE.items() if k in values}, **TINY_KNOBS, **overrides})
        meter = CpuModelMeter()
        try:
            return execute_trial(pipeline, [(get_knob(n), v) for n, v in values.items()], meter, cpu_runtime, 0,
                                 store=store)[0]
        finally:
            meter.close()

    knobs = {"model.blocks_removed": 1, "training.finetune_epochs": 1}
    built = stored(knobs)
    assert built.reuse["published"] == {"data": True, "model": True, "training": True}
    served = {**knobs, "inference.batch_size": 8, "inference.static_int8": True}
    reused = stored(served)
    assert reused.reuse["status"] == "reused" and reused.reuse["boundary"] == "training"
    assert reused.verifications["inference.batch_size"]["largest"] == 8
    assert reused.quality == run(pipeline, served, cpu_runtime)[0].quality


def test_baseline_values_change_nothing_here(cpu_runtime):
    from greenknobs.knobs import REGISTRY
    from greenknobs.testing import knob_contract as C

    # a trial starts at torch's default thread count (one per core): on a busy 2-core box tiny
    # convolutions crawl on two threads, so this one runs on 100 images at 8 x 8
    default_threads = REGISTRY["system.threads"].default
    smaller = P(P.validate_options({**TINY, "max_examples": 100}))
    C.check_baseline_changes_nothing(smaller, cpu_runtime, run=lambda p, o, rt: run(p, {**o, "data.input_resolution": 8}, rt),
                                     overrides={"system.threads": default_threads})


def test_the_search_can_check_progress_during_training(pipeline, cpu_runtime):
    """``trial.check_progress`` (the search's stop for hopeless trials) is called as training passes
    fractions of its planned steps -- dense and fine-tuning together -- with a validation scorer
    whose cost is charged neither to the training phase nor to a step of its breakdown."""
    from greenknobs.knobs import get_knob
    from greenknobs.meters.cpu_model import CpuModelMeter
    from greenknobs.pipeline import execute_trial
    from greenknobs.testing import fixtures as F

    seen: list[tuple[float, float]] = []
    values = {n: get_knob(n).default for n in pipeline.knobs}
    values.update({k: v for k, v in F.TINY_BASELINE.items() if k in values})
    values.update({**TINY_KNOBS, "model.blocks_removed": 1, "training.finetune_epochs": 1})
    meter = CpuModelMeter()
    try:
        result, _ = execute_trial(pipeline, [(get_knob(n), v) for n, v in values.items()], meter, cpu_runtime, 0,
                                  progress_check=lambda fraction, validate: seen.append((fraction, validate())))
    finally:
        meter.close()
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 2
    assert all(0.0 <= q <= 1.0 for _, q in seen)
    training = result.phases["training"]
    excluded = training.details["excluded"]
    assert len(excluded) == len(seen) and all(e["why"] == "progress check" for e in excluded)
    assert training.energy_j == pytest.approx(training.details["spent_j"] - sum(e["energy_j"] for e in excluded))
    # the steps leave the scoring out too (measured inside the trial's own window for it, so a few mJ
    # of window overhead per check stay in); left in, they would exceed the phase by the whole scoring
    steps = training.details["energy_breakdown"]
    scoring = training.details["spent_j"] - training.energy_j
    assert sum(steps[k]["energy_j"] for k in ("dense", "pruning", "finetune")) < training.energy_j + 0.5 * scoring


def test_image_folder(tmp_path, cpu_runtime):
    """A user's folder, one sub-folder per class: PNG through Pillow, .npy without it."""
    import numpy as np
    from PIL import Image

    from greenknobs.errors import ConfigError

    rng = np.random.default_rng(0)
    for c, name in enumerate(["circle", "square", "stripe"]):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(20):
            img = rng.integers(0, 60, (20, 20, 3)).astype(np.uint8)
            img[:, :, c] += 150
            if i % 2:
                Image.fromarray(img).save(tmp_path / "imgs" / name / f"{i}.png")
            else:
                np.save(tmp_path / "imgs" / name / f"{i}.npy", img)
    Image.fromarray(img).save(tmp_path / "imgs" / "square" / "copy.png")  # a duplicate: dropped before the split
    opts = P.validate_options({"dataset": {"path": str(tmp_path / "imgs"), "channels": 3, "image_size": 16},
                               "widths": [4, 8], "blocks": [1, 1], "calibration_samples": 16})
    result, ctx = run(P(opts), {"training.epochs": 2, "training.learning_rate": 3e-3}, cpu_runtime)
    assert result.phases["data"].details["labels"] == ["circle", "square", "stripe"]
    assert result.phases["data"].details["duplicates_dropped_before_split"] == 1
    assert result.verifications["data.input_resolution"]["training_input"] == [3, 12, 12]
    assert result.quality["test"]["macro_f1"] > result.quality["test"]["trivial_macro_f1"]
    summary = P.check_inputs(opts, 0)  # greenknobs validate: read and split as trial 0 will
    assert summary["images"] == 60 and summary["classes"] == 3 and summary["image_shape"] == [3, 16, 16]
    (tmp_path / "few" / "a").mkdir(parents=True)
    (tmp_path / "few" / "b").mkdir(parents=True)
    for name, n in (("a", 10), ("b", 1)):
        for i in range(n):
            np.save(tmp_path / "few" / name / f"{i}.npy", np.full((4, 4), i + 10 * (name == "b"), dtype=np.float32))
    with pytest.raises(ConfigError, match="pipeline.split"):
        P.check_inputs(P.validate_options({"dataset": {"path": str(tmp_path / "few"), "channels": 1}}), 0)
    with pytest.raises(ConfigError, match="pipeline.dataset.path"):
        P.validate_options({"dataset": {"path": str(tmp_path / "nowhere")}})
    with pytest.raises(ConfigError, match="pipeline.dataset.channels"):
        P.validate_options({"dataset": {"path": str(tmp_path / "imgs"), "channels": 2}})


# -- the experiment, end to end ---------------------------------------------------------------------
def test_quick_search_of_the_digits_experiment_end_to_end(tmp_path, monkeypatch):
    from optuna.trial import TrialState

    from greenknobs import search
    from greenknobs.config import load_experiment
    from greenknobs.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    exp = load_experiment(ROOT / "experiments" / "digits-cnn.yaml").quick_variant().with_overrides(
        trials=3, storage=f"sqlite:///{tmp_path}/optuna.db", mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db")
    tracker = Tracker(exp.mlflow_uri, exp.name)
    outcome = search.Search(exp, tracker).run()
    published = search.publish(exp, outcome.study, tracker)
    tracker.end_study()
    trials = outcome.study.get_trials()
    assert len(trials) >= 3 and trials[0].user_attrs["baseline"] is True
    # complete, or stopped by the search's own check for hopeless trials -- never failed
    assert all(t.state == TrialState.COMPLETE or t.user_attrs.get("stop_reason") for t in trials), \
        [t.user_attrs.get("fail_reason") for t in trials]
    result = trials[0].user_attrs["result"]
    assert set(result["phases"]) == {"data", "model", "system", "training", "inference"}
    ev = result["verifications"]["model.blocks_removed"]
    assert ev["parameters_before"] == ev["parameters_after"] > 0 and ev["flops_per_image_after"] > 0
    assert result["quality"]["test"]["macro_f1"] > result["quality"]["test"]["trivial_macro_f1"] + 0.05
    assert published.rows and published.files["pareto_csv"].stat().st_size > 0
    front_csv = pd.read_csv(published.files["pareto_csv"])  # the served model's size: parameters and FLOPs
    assert (front_csv["parameters"] > 0).all() and (front_csv["flops_per_prediction"] > 0).all()
    assert all(r.model_size["sources"]["flops_per_prediction"] == "inference.served.flops_per_image" for r in published.rows)
    assert tracker.counts() == {"parents": 1, "children": len(trials)}
