"""A pruned (and compensated / merged) model saves, reloads with from_pretrained and gives the same outputs."""

from __future__ import annotations

import pytest
import torch

from greenknobs.ml import hf
from greenknobs.ml.layers import config_layer_count, find_layer_stack, layer_count, remove_layers, skipping_layers
from greenknobs.ml.pruning import build_calibration, prune
from greenknobs.ml.pruning.calibration import run_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def calib():
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1, 100, (10,), generator=g).tolist(), "label": i % 3} for i in range(16)]
    return build_calibration(rows, pad_id=0, n_samples=16)


CASES = [
    ("bert", lambda: hf.tiny_bert_classifier(layers=4), "block_influence", False),
    ("llama", lambda: hf.tiny_llama_lm(layers=4), "block_influence", True),
    ("llama-merge", lambda: hf.tiny_llama_lm(layers=4), "merge", False),
    ("gpt2", lambda: hf.tiny_gpt2_lm(layers=4), "angular", True),  # tied embeddings get untied by compensation
]


@pytest.mark.parametrize("name,make,method,comp", CASES, ids=[c[0] for c in CASES])
def test_pruned_model_reloads_with_identical_outputs(name, make, method, comp, calib, tmp_path):
    model = make().eval()
    report = prune(model, 2, method, compensation_on=comp, calibration=calib)
    assert layer_count(model) == config_layer_count(model) == 2
    hf.save_pretrained(model, tmp_path)
    reloaded = hf.load_pretrained_like(model, tmp_path).eval()
    assert layer_count(reloaded) == 2 and config_layer_count(reloaded) == 2
    ids, mask = calib.batches[0]
    with torch.no_grad():
        torch.testing.assert_close(run_model(reloaded, ids, mask).logits, run_model(model, ids, mask).logits)
    if comp:
        assert report.alphas


def test_pruned_llama_renumbers_attention_layer_indices(calib):
    model = hf.tiny_llama_lm(layers=6)
    prune(model, 3, "bottom")
    _, _, stack = find_layer_stack(model)
    assert [b.self_attn.layer_idx for b in stack] == [0, 1, 2]
    out = model.generate(calib.batches[0][0][:1, :4], max_new_tokens=3, do_sample=False)  # KV cache slots line up
    assert out.shape[1] == 7


def test_skipping_layers_matches_removing_them_and_restores_the_stack(calib):
    import copy

    model = hf.tiny_gpt2_lm(layers=4).eval()
    removed = copy.deepcopy(model)
    remove_layers(removed, [1, 2])
    ids, mask = calib.batches[0]
    with torch.no_grad():
        with skipping_layers(model, {1, 2}):
            skipped = run_model(model, ids, mask).logits
        torch.testing.assert_close(skipped, run_model(removed, ids, mask).logits)
    assert layer_count(model) == 4
