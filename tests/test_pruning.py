"""Layer pruning: methods, Prune&Comp compensation, CoMe merge, Gumbel-TopK mask, healing."""

from __future__ import annotations

import copy

import pytest
import torch

from greenknobs.errors import KnobError
from greenknobs.ml import hf
from greenknobs.ml.layers import config_layer_count, layer_count, remove_layers, skipping_layers
from greenknobs.ml.pruning import METHODS, build_calibration, prune
from greenknobs.ml.pruning.calibration import capture_stream, layer_stats, run_model
from greenknobs.ml.pruning.compensation import CompensationNotApplicable, estimate_alpha, fuse_alpha, is_pre_norm
from greenknobs.ml.pruning.healing import heal
from greenknobs.ml.pruning.mask import gumbel_topk_mask, relaxed_topk, train_layer_mask
from greenknobs.ml.pruning.merge import channel_importance, merge_pair
from greenknobs.ml.pruning.scores import block_influence


def _rows(n=24, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, vocab, (int(torch.randint(6, 16, (1,), generator=g)),), generator=g).tolist(),
             "label": i % 3} for i in range(n)]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def calib():
    return build_calibration(_rows(), pad_id=0, n_samples=16, batch_size=8)


@pytest.fixture(scope="module")
def dev():
    return build_calibration(_rows(seed=1), pad_id=0, n_samples=12, batch_size=6, seed=1)


def _stream_entering(model, position, calib):
    ids, mask = calib.batches[0]
    with torch.no_grad(), capture_stream(model) as states:
        run_model(model, ids, mask)
        return states[position].clone(), mask.bool()


@pytest.mark.parametrize("make", [hf.tiny_llama_lm, hf.tiny_gpt2_lm])
@pytest.mark.parametrize("forced_alpha", [None, 3.0])
def test_alpha_fusion_scales_the_stream_entering_the_next_layer(make, forced_alpha, calib):
    """Prune&Comp: after fusing alpha and deleting block i, former block i+1 sees exactly alpha * h_i."""
    model = make(layers=4).eval()
    h_i, valid = _stream_entering(model, 1, calib)
    alpha = forced_alpha or estimate_alpha(layer_stats(model, calib), 1, 2)
    fuse_alpha(model, 1, alpha)
    remove_layers(model, [1])
    entering, _ = _stream_entering(model, 1, calib)  # new position 1 = former block 2
    target = alpha * h_i[valid]
    # relative to the stream's norm: what is left is the norms' epsilon (1e-6 .. 1e-5 in a tiny,
    # freshly initialised stream), far below the |alpha - 1| gap the test must tell apart
    error = float((entering[valid] - target).norm() / target.norm())
    gap = abs(alpha - 1) / alpha
    assert gap > 0.005
    assert error < 2e-3 and error < gap / 20


def test_alpha_is_the_mean_channel_ratio_of_mean_abs_activations(calib):
    model = hf.tiny_llama_lm(layers=4).eval()
    stats = layer_stats(model, calib)
    h1, valid = _stream_entering(model, 1, calib)
    h2, _ = _stream_entering(model, 2, calib)
    # one batch only here, so compare with stats from that batch
    one = type(calib)([calib.batches[0]])
    expected = (h2[valid].abs().mean(0) / h1[valid].abs().mean(0)).mean()
    assert estimate_alpha(layer_stats(model, one), 1, 2) == pytest.approx(float(expected), rel=1e-4)
    assert stats.abs_mean.shape == (5, 32)


def test_compensation_keeps_the_lm_head_intact_on_tied_gpt2(calib):
    model = hf.tiny_gpt2_lm(layers=4).eval()
    head_before = model.lm_head.weight.detach().clone()
    fuse_alpha(model, 2, 2.0)
    assert model.lm_head.weight is not model.transformer.wte.weight
    torch.testing.assert_close(model.lm_head.weight, head_before)
    torch.testing.assert_close(model.transformer.wte.weight, 2.0 * head_before)


def test_post_norm_bert_refuses_compensation(calib):
    model = hf.tiny_bert_classifier(layers=4)
    assert not is_pre_norm(model, calib)
    assert is_pre_norm(hf.tiny_llama_lm(layers=4), calib)
    assert is_pre_norm(hf.tiny_gpt2_lm(layers=4), calib)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CompensationNotApplicable, match="post-norm"):
        prune(model, 1, "block_influence", compensation_on=True, calibration=calib)
    assert layer_count(model) == 4  # refused before touching anything
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("iterative", [False, True])
def test_every_method_removes_valid_layers_from_llama(method, iterative, calib, dev):
    model = hf.tiny_llama_lm(layers=6)
    report = prune(model, 2, method, iterative=iterative, calibration=calib, dev=dev, mask_steps=5)
    assert layer_count(model) == config_layer_count(model) == report.layers_after == 4
    assert len(set(report.removed)) == 2 and all(0 <= i < 6 for i in report.removed)
    assert len(report.rounds) == (2 if iterative else 1)
    if method == "top":
        assert report.removed == [4, 5]
    if method == "bottom":
        assert report.removed == [0, 1]
    if method == "angular" and not iterative:
        assert report.removed[1] == report.removed[0] + 1  # a contiguous block
    if method not in ("top", "bottom"):
        assert len(report.rounds[0]["scores"]) >= 5
    ids, mask = calib.batches[0]
    assert torch.isfinite(run_model(model, ids, mask).logits).all()


@pytest.mark.parametrize("method", ["block_influence", "iterative_loss", "iterative_metric", "learned_mask"])
def test_methods_run_on_a_bert_classifier(method, calib, dev):
    model = hf.tiny_bert_classifier(layers=4)
    report = prune(model, 1, method, calibration=calib, dev=dev, mask_steps=6)
    assert layer_count(model) == 3 and len(report.removed) == 1
    assert report.score_name


def test_iterative_rescoring_uses_the_pruned_compensated_model(calib):
    model = hf.tiny_llama_lm(layers=6)
    reference = copy.deepcopy(model)
    report = prune(model, 2, "block_influence", iterative=True, compensation_on=True, calibration=calib)
    first = report.rounds[0]
    prune(reference, 1, "block_influence", compensation_on=True, calibration=calib)  # round 1 by hand
    expected = block_influence(layer_stats(reference, calib))
    second = report.rounds[1]["scores"]
    assert first["removed"][0] not in second and len(second) == 5
    assert list(second.values()) == pytest.approx(expected, abs=1e-5)
    assert len(report.alphas) == 2


def test_one_shot_scores_once_on_the_unpruned_model(calib):
    model = hf.tiny_llama_lm(layers=6)
    expected = block_influence(layer_stats(model, calib))
    report = prune(model, 2, "block_influence", calibration=calib)
    assert list(report.rounds[0]["scores"].values()) == pytest.approx(expected, abs=1e-6)
    assert report.removed == sorted(sorted(range(6), key=lambda i: expected[i])[:2])


def test_calibration_methods_need_calibration():
    with pytest.raises(KnobError, match="calibration"):
        prune(hf.tiny_llama_lm(layers=4), 1, "block_influence")


def test_merge_with_all_shares_on_one_side_equals_skipping_the_other(calib):
    """CoMe mechanics: with BI_b = 0 every channel comes from block a (norms folded), so the merged
    model must compute exactly what the model does with block b skipped."""
    model = hf.tiny_llama_lm(layers=4).eval()
    ids, mask = calib.batches[0]
    with torch.no_grad(), skipping_layers(model, {2}):
        expected = run_model(model, ids, mask).logits
    importance = channel_importance(model, calib, [1, 2])
    info = merge_pair(model, 1, importance, bi_a=0.3, bi_b=0.0)
    assert info["kv_groups_from_b"] == 0 and info["mlp_channels_from_b"] == 0
    with torch.no_grad():
        torch.testing.assert_close(run_model(model, ids, mask).logits, expected, rtol=1e-4, atol=1e-5)


def test_merge_takes_channels_from_both_blocks(calib):
    model = hf.tiny_llama_lm(layers=4).eval()
    importance = channel_importance(model, calib, [0, 1])
    info = merge_pair(model, 0, importance, bi_a=0.5, bi_b=0.5)
    assert info["kv_groups_from_a"] == 1 and info["kv_groups_from_b"] == 1
    assert info["mlp_channels_from_a"] + info["mlp_channels_from_b"] == 64
    assert layer_count(model) == 3
    assert torch.equal(model.model.layers[0].input_layernorm.weight, torch.ones(32))


def test_merge_refuses_non_llama_and_compensation(calib):
    with pytest.raises(KnobError, match="LLaMA-family"):
        prune(hf.tiny_gpt2_lm(layers=4), 1, "merge", calibration=calib)
    with pytest.raises(CompensationNotApplicable):
        prune(hf.tiny_llama_lm(layers=4), 1, "merge", compensation_on=True, calibration=calib)


def test_gumbel_topk_relaxation_and_straight_through_mask():
    s = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0], requires_grad=True)
    soft = relaxed_topk(s, 3, tau=0.5)
    assert float(soft.detach().sum()) == pytest.approx(3.0, abs=1e-4) and bool((soft >= 0).all())
    assert soft.detach().argsort(descending=True)[:3].tolist() == [2, 4, 0]  # follows the logits
    m = gumbel_topk_mask(s, 3, tau=0.5, generator=torch.Generator().manual_seed(0))
    assert sorted(m.detach().tolist()) == [0.0, 0.0, 1.0, 1.0, 1.0]
    (m * torch.arange(5.0)).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_learned_mask_moves_the_logits_and_leaves_weights_alone(calib):
    model = hf.tiny_llama_lm(layers=4)
    before = [p.detach().clone() for p in model.parameters()]
    logits = train_layer_mask(model, 3, calib, "causal_lm", steps=6)
    assert logits.shape == (4,) and logits.abs().sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("entropy_weighted", [False, True])
def test_healing_reduces_the_kd_loss_of_a_pruned_lm(entropy_weighted, calib):
    teacher = hf.tiny_llama_lm(layers=4).eval()
    student = copy.deepcopy(teacher)
    prune(student, 2, "top")
    out = heal(student, teacher, calib, steps=12, task="causal_lm", lr=3e-3, entropy_weighted=entropy_weighted)
    assert out["kd_loss_after"] < out["kd_loss_before"]
    assert out["entropy_weighted_seen"] is entropy_weighted and out["steps_taken"] == 12
    assert out["lambda_seen"] == pytest.approx(0.5, abs=1e-5) and out["temperature_seen"] == pytest.approx(2.0, rel=1e-4)


def test_healing_a_classifier_distils_hidden_states(calib):
    teacher = hf.tiny_bert_classifier(layers=4).eval()
    student = copy.deepcopy(teacher)
    prune(student, 2, "top")
    with torch.no_grad():  # a random BERT's blocks are near-identity: give the student a real gap to close
        for p in student.bert.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for m in student.modules():  # dropout noise would blur a 10-step comparison
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    out = heal(student, teacher, calib, steps=10, task="classification", lr=3e-3)
    assert out["loss"] == "hidden-state MSE" and out["lambda_seen"] is None
    assert out["kd_loss_after"] < out["kd_loss_before"]


def test_one_shot_merge_finds_a_full_tiling_of_disjoint_pairs():
    from greenknobs.ml.pruning.methods import _cheapest_disjoint_pairs

    # greedy would take the cheapest pair (1, 2) first and then could not fit 2 pairs in 4 layers
    assert _cheapest_disjoint_pairs([0.5, 0.1, 0.5], 2) == [0, 2]
    assert _cheapest_disjoint_pairs([0.5, 0.1, 0.5], 1) == [1]
    assert _cheapest_disjoint_pairs([0.3, 0.2, 0.9, 0.1, 0.4], 2) == [1, 3]
