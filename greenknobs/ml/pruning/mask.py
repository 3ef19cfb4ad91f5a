"""E³-Pruner-style learned layer mask: a Gumbel-TopK relaxation trained briefly with frozen weights.

Formulation (ours; E³-Pruner's exact equations were not published in what we could read):
  * one logit s_i per block (init 0, or any prior);
  * each step draws Gumbel noise g_i and forms z = s + g;
  * relaxed top-k (Xie & Ermon 2019, "Reparameterizable subset sampling"): a^1 = softmax(z/tau);
    for j = 2..k: z <- z + log(1 - a^{j-1}), a^j = softmax(z/tau); soft mask m~ = sum_j a^j
    (entries >= 0 summing to k; an entry can slightly exceed 1, the hard mask below never does);
  * straight-through: the forward pass uses the hard top-k mask m of z, gradients flow through m~
    (m_st = m + m~ - stop_grad(m~)), so the model always runs with exactly k blocks, as it will
    after pruning;
  * block i's output becomes h_i + m_i * (block_i(h_i) - h_i) (m_i = 0 skips it);
  * loss = the task objective on calibration (LM cross-entropy, or the centroid-probe
    cross-entropy for a classifier, centroids from the unmasked model); Adam on s only;
  * tau anneals geometrically from tau0 to tau1; the kept blocks are the top-k of s.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from greenknobs.ml.layers import find_layer_stack
from greenknobs.ml.pruning.calibration import Calibration, first_tensor, hidden_arg, replace_first
from greenknobs.ml.pruning.scores import CentroidProbe, lm_loss, pooled


def relaxed_topk(z: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    soft = torch.zeros_like(z)
    logits = z
    for _ in range(k):
        a = torch.softmax(logits / tau, dim=-1)
        soft = soft + a
        logits = logits + torch.log((1.0 - a).clamp(min=1e-20))
    return soft


def gumbel_topk_mask(s: torch.Tensor, k: int, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    u = torch.rand(s.shape, generator=generator).clamp(1e-10, 1 - 1e-10)
    z = s - torch.log(-torch.log(u))
    soft = relaxed_topk(z, k, tau)
    hard = torch.zeros_like(s)
    hard[torch.topk(z.detach(), k).indices] = 1.0
    return hard + soft - soft.detach()


def train_layer_mask(model: nn.Module, keep: int, calibration: Calibration, task: str, steps: int = 40,
                     lr: float = 0.1, tau0: float = 1.0, tau1: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Return the trained logits s (one per block); keep the top-``keep`` of them."""
    _, _, stack = find_layer_stack(model)
    n = len(stack)
    s = torch.zeros(n, requires_grad=True)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([s], lr=lr)
    probe = None
    if task == "classification":
        with torch.no_grad():
            model.eval()
            reps = torch.cat([pooled(model, ids, m).float() for ids, m in calibration.batches])
        probe = CentroidProbe(reps, torch.cat(calibration.labels))
    current: dict[str, torch.Tensor] = {}
    handles = []
    for i, block in enumerate(stack):
        def pre(mod, args, kwargs):
            current["in"] = hidden_arg(args, kwargs)

        def post(mod, args, out, i=i):
            h_in = current["in"]
            return replace_first(out, h_in + current["mask"][i].to(h_in.dtype) * (first_tensor(out) - h_in))
        handles += [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post)]
    was_training = model.training
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # only the mask learns
    model.eval()
    try:
        for step in range(steps):
            tau = tau0 * (tau1 / tau0) ** (step / max(steps - 1, 1))
            current["mask"] = gumbel_topk_mask(s, keep, tau, gen)
            b = step % len(calibration.batches)
            ids, mask = calibration.batches[b]
            if probe is None:
                loss = lm_loss(model, ids, mask)
            else:
                logits = probe.logits(pooled(model, ids, mask).float())
                assert calibration.labels is not None  # a probe is only built on labelled data
                loss = nn.functional.cross_entropy(logits, calibration.labels[b])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if not math.isfinite(loss.item()):
                break
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)
    return s.detach()
