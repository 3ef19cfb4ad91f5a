"""CoMe-style merge (Wang et al.): fuse two adjacent LLaMA-family blocks into one of the same width.

For blocks a and b = a+1, with shares w_a = BI_a / (BI_a + BI_b), w_b = 1 - w_a:
  * channel importance = mean |input activation of the output projection| x L1 norm of that
    projection's column (o_proj for attention, down_proj for the MLP), on calibration data;
  * attention: the merged block keeps round(w_a * G) key/value groups of a and the rest from b
    (G = number of KV heads; a group = one KV head and the query heads that share it; group
    importance = sum over its o_proj input channels); q/k/v rows and o_proj columns are
    concatenated;
  * MLP: round(w_a * I) intermediate channels of a and the rest from b (gate/up rows, down_proj
    columns concatenated);
  * each block's RMSNorm weights are folded into its own q/k/v and gate/up columns first, so the
    merged block's norms are all-ones and every kept channel sees exactly the input scaling it
    was trained with.
The merged block then computes, on one input, the most important half of each block's branches.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from greenknobs.errors import KnobError
from greenknobs.ml.layers import find_layer_stack, keep_layers
from greenknobs.ml.pruning.calibration import Calibration, run_model

_NEEDED = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")


def check_mergeable(model: nn.Module) -> None:
    _, _, stack = find_layer_stack(model)
    names = {n for n, _ in stack[0].named_modules()}
    missing = [n for n in _NEEDED if n not in names]
    if missing:
        raise KnobError(f"the merge method needs a LLaMA-family block; {type(stack[0]).__name__} lacks {', '.join(missing)}")


@torch.no_grad()
def channel_importance(model: nn.Module, calibration: Calibration, positions: list[int]) -> dict[int, dict[str, torch.Tensor]]:
    """Per block: importance of each o_proj input channel and each down_proj input channel."""
    _, _, stack = find_layer_stack(model)
    sums: dict[tuple[int, str], torch.Tensor] = {}
    current_mask: list[torch.Tensor] = []
    handles = []
    for p in positions:
        for key, mod in (("o", stack[p].self_attn.o_proj), ("down", stack[p].mlp.down_proj)):
            def pre(m, args, p=p, key=key):
                valid = current_mask[0].to(args[0].device).unsqueeze(-1).to(args[0].dtype)
                s = (args[0].abs() * valid).sum((0, 1)).float()
                sums[(p, key)] = sums.get((p, key), 0) + s
            handles.append(mod.register_forward_pre_hook(pre))
    was_training = model.training
    model.eval()
    try:
        for ids, mask in calibration.batches:
            current_mask[:] = [mask]
            run_model(model, ids, mask)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    tokens = calibration.n_tokens
    out = {}
    for p in positions:
        blk = stack[p]
        out[p] = {"o": sums[(p, "o")] / tokens * blk.self_attn.o_proj.weight.abs().sum(0).float(),
                  "down": sums[(p, "down")] / tokens * blk.mlp.down_proj.weight.abs().sum(0).float()}
    return out


def _fold_norms(block: nn.Module) -> None:
    """Move RMSNorm weights into the projections that read the normalised input."""
    w_in = block.input_layernorm.weight.detach().clone()
    w_post = block.post_attention_layernorm.weight.detach().clone()
    for proj in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj):
        proj.weight.mul_(w_in)
    for proj in (block.mlp.gate_proj, block.mlp.up_proj):
        proj.weight.mul_(w_post)
    block.input_layernorm.weight.fill_(1.0)
    block.post_attention_layernorm.weight.fill_(1.0)


def _split(total: int, share_a: float) -> int:
    return int(min(total, max(0, round(share_a * total))))


@torch.no_grad()
def merge_pair(model: nn.Module, pos: int, importance: dict[int, dict[str, torch.Tensor]],
               bi_a: float, bi_b: float) -> dict[str, float | int]:
    """Replace blocks pos and pos+1 by their merge (at pos); returns what was kept from each."""
    _, _, stack = find_layer_stack(model)
    a, b = copy.deepcopy(stack[pos]), copy.deepcopy(stack[pos + 1])
    _fold_norms(a)
    _fold_norms(b)
    cfg = model.config
    heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    per_group = heads // kv
    share_a = bi_a / (bi_a + bi_b) if bi_a + bi_b > 0 else 0.5

    def group_scores(p):
        return importance[p]["o"].view(kv, per_group * head_dim).sum(1)

    ga = _split(kv, share_a)
    groups_a = torch.topk(group_scores(pos), ga).indices.sort().values if ga else torch.empty(0, dtype=torch.long)
    groups_b = torch.topk(group_scores(pos + 1), kv - ga).indices.sort().values if kv - ga else torch.empty(0, dtype=torch.long)

    def rows(groups, width):
        if not len(groups):
            return torch.empty(0, dtype=torch.long)
        return torch.cat([torch.arange(g * width, (g + 1) * width) for g in groups.tolist()])

    q_a, q_b = rows(groups_a, per_group * head_dim), rows(groups_b, per_group * head_dim)
    kv_a, kv_b = rows(groups_a, head_dim), rows(groups_b, head_dim)
    merged = a
    att_a, att_b = a.self_attn, b.self_attn
    for name, ia, ib in (("q_proj", q_a, q_b), ("k_proj", kv_a, kv_b), ("v_proj", kv_a, kv_b)):
        pa, pb = getattr(att_a, name), getattr(att_b, name)
        getattr(merged.self_attn, name).weight.copy_(torch.cat([pa.weight[ia], pb.weight[ib]]))
        if pa.bias is not None:
            getattr(merged.self_attn, name).bias.copy_(torch.cat([pa.bias[ia], pb.bias[ib]]))
    o = merged.self_attn.o_proj
    o_a, o_b = att_a.o_proj.weight.clone(), att_b.o_proj.weight
    o.weight.copy_(torch.cat([o_a[:, q_a], o_b[:, q_b]], dim=1))
    if o.bias is not None:  # both blocks' biases were added to the stream
        o.bias.add_(att_b.o_proj.bias)

    inter = a.mlp.down_proj.weight.shape[1]
    ma = _split(inter, share_a)
    ch_a = torch.topk(importance[pos]["down"], ma).indices.sort().values
    ch_b = torch.topk(importance[pos + 1]["down"], inter - ma).indices.sort().values
    mlp_a, mlp_b = copy.deepcopy(a.mlp), b.mlp
    for name in ("gate_proj", "up_proj"):
        getattr(merged.mlp, name).weight.copy_(torch.cat([getattr(mlp_a, name).weight[ch_a], getattr(mlp_b, name).weight[ch_b]]))
    merged.mlp.down_proj.weight.copy_(torch.cat([mlp_a.down_proj.weight[:, ch_a], mlp_b.down_proj.weight[:, ch_b]], dim=1))
    if merged.mlp.down_proj.bias is not None:
        merged.mlp.down_proj.bias.add_(mlp_b.down_proj.bias)

    stack[pos] = merged
    keep_layers(model, [i for i in range(len(stack)) if i != pos + 1])
    return {"share_a": share_a, "kv_groups_from_a": ga, "kv_groups_from_b": kv - ga,
            "mlp_channels_from_a": ma, "mlp_channels_from_b": inter - ma}
