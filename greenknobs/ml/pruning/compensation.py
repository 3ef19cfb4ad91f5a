"""Prune&Comp (Chen et al.): fuse the magnitude gap of a removed block into earlier weights, offline.

Removing blocks i..j-1 of a pre-norm model feeds block j with h_i where it used to see h_j,
which is larger. With alpha = mean_c( mean|h_j[c]| / mean|h_i[c]| ), scaling the token (and
position) embeddings and the residual-branch output projections of every block before i by
alpha makes the stream entering the former block j exactly alpha * h_i: the residual stream
is a sum of those terms, and every pre-norm block reads it through a scale-invariant norm.

In a post-norm model (BERT family) each block's output is re-normalised, so there is no gap
to close and the fusion would change nothing meaningful: we refuse instead of pretending.
"""

from __future__ import annotations

import torch
from torch import nn

from greenknobs.errors import KnobError
from greenknobs.ml.layers import find_layer_stack
from greenknobs.ml.pruning.calibration import Calibration, LayerStats, first_tensor, hidden_arg, run_model

# Leaf names of the projections that write a block's branch back into the residual stream:
# LLaMA/Mistral/Qwen (o_proj, down_proj), GPT-2 (attn.c_proj, mlp.c_proj), OPT/Phi (out_proj, fc2),
# GPT-NeoX (dense_4h_to_h + attention.dense is ambiguous, so not listed), T5-style (wo).
RESIDUAL_OUTPUTS = ("o_proj", "down_proj", "c_proj", "out_proj", "fc2", "dense_4h_to_h", "wo")


class CompensationNotApplicable(KnobError):
    """Magnitude compensation was asked for a model it does not apply to (post-norm)."""


@torch.no_grad()
def is_pre_norm(model: nn.Module, calibration: Calibration, rtol: float = 0.25) -> bool:
    """Empirically: a pre-norm block computes h + f(norm(h)), so block(2h) - 2h == block(h) - h.

    Up to the norm's epsilon, which matters for freshly initialised small-norm streams (a few
    per cent); a post-norm block misses by the size of h itself (order 1), hence the loose rtol.
    """
    _, _, stack = find_layer_stack(model)
    ids, mask = calibration.batches[0]
    seen: dict[str, torch.Tensor] = {}
    scale = [1.0]

    def pre(mod, args, kwargs):
        h = hidden_arg(args, kwargs) * scale[0]
        seen["in"] = h
        return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

    def post(mod, args, out):
        seen["out"] = first_tensor(out)

    was_training = model.training
    model.eval()
    handles = [stack[0].register_forward_pre_hook(pre, with_kwargs=True), stack[0].register_forward_hook(post)]
    try:
        run_model(model, ids, mask)
        branch1 = seen["out"] - seen["in"]
        scale[0] = 2.0
        run_model(model, ids, mask)
        branch2 = seen["out"] - seen["in"]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    valid = mask.bool().to(branch1.device)
    err = (branch2 - branch1)[valid].norm() / branch1[valid].norm().clamp(min=1e-12)
    return bool(err < rtol)


def require_pre_norm(model: nn.Module, calibration: Calibration) -> None:
    if not is_pre_norm(model, calibration):
        kind = getattr(model.config, "model_type", type(model).__name__)
        raise CompensationNotApplicable(
            f"magnitude compensation (Prune&Comp) does not apply to {kind}: it is a post-norm model "
            "(each block re-normalises its output, so removing a block leaves no magnitude gap to fuse); "
            "set model.pruning_compensation=false")


def estimate_alpha(stats: LayerStats, start: int, stop: int) -> float:
    """alpha for removing blocks start..stop-1: mean over channels of mean|h_stop| / mean|h_start|."""
    ratio = stats.abs_mean[stop] / stats.abs_mean[start].clamp(min=1e-12)
    return float(ratio.mean())


def residual_outputs(block: nn.Module) -> list[nn.Module]:
    found = [m for name, m in block.named_modules() if name.rsplit(".", 1)[-1] in RESIDUAL_OUTPUTS
             and isinstance(getattr(m, "weight", None), torch.Tensor)]
    if not found:
        raise CompensationNotApplicable(
            f"no residual-branch output projection ({', '.join(RESIDUAL_OUTPUTS)}) in {type(block).__name__}")
    return found


def untie_output_embeddings(model: nn.Module) -> bool:
    """Give the LM head its own weight, so scaling the input embedding leaves the logits alone."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or out.weight is not inp.weight:
        return False
    out.weight = nn.Parameter(inp.weight.detach().clone())
    model.config.tie_word_embeddings = False
    text_config = getattr(model.config, "get_text_config", lambda **_: None)(decoder=True)
    if text_config is not None and text_config is not model.config:
        text_config.tie_word_embeddings = False
    return True


@torch.no_grad()
def fuse_alpha(model: nn.Module, before: int, alpha: float) -> int:
    """Scale embeddings and the residual-branch outputs of blocks 0..before-1 by ``alpha``.

    Returns how many tensors were scaled. Call before deleting the gap's blocks.
    """
    untie_output_embeddings(model)
    _, _, stack = find_layer_stack(model)
    in_stack = {id(m) for m in stack.modules()}
    scaled = 0
    for m in model.modules():
        if isinstance(m, nn.Embedding) and id(m) not in in_stack:
            m.weight.mul_(alpha)
            scaled += 1
    for block in list(stack)[:before]:
        for proj in residual_outputs(block):
            proj.weight.mul_(alpha)
            if getattr(proj, "bias", None) is not None:
                proj.bias.mul_(alpha)
            scaled += 1
    return scaled
