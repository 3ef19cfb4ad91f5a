"""Structural pruning of a SmallResNet: smaller tensors and fewer FLOPs, never masks.

* Channel pruning removes inner channels of residual blocks: rows of ``conv1``, the matching
  entries of ``bn1`` (affine terms and running statistics) and the matching input columns of
  ``conv2`` -- the classic place to prune a ResNet (Li et al. 2017, "Pruning Filters for Efficient
  ConvNets"), because the residual stream and every other block keep their shapes. The channels
  kept in each block are the highest-scoring by one criterion:
    - ``bn_gamma``:  |gamma| of the block's first batch norm (network slimming's scale factor)
    - ``l1_norm``:   L1 norm of the filter in ``conv1``
    - ``fmap_rank``: average rank of the channel's feature map (after bn1 and ReLU) over calibration
                     images (HRank); ties -- frequent on tiny maps -- broken by |gamma|
* Block removal deletes whole residual blocks with an identity shortcut (the block then *is* the
  identity, so every shape downstream is unchanged). Importance of a block = the increase of the
  cross-entropy on calibration images (from the training split) when that block is bypassed;
  the least important go.
* ``hybrid_prune`` does both, in either order: the second step is scored on the model the first
  step left (after channel pruning a block's importance is measured at its pruned width; after
  block removal only surviving blocks are channel-pruned). After each step the batch-norm running
  statistics are re-estimated on the calibration images ("adaptive BN", as in EagleEye, Li et al.
  2020): the surviving layers see other inputs than those they were trained on, and without it a
  channel-pruned model scores near chance before fine-tuning -- and so would the block
  importances scored on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from greenknobs.ml.vision.count import measure
from greenknobs.ml.vision.resnet import BasicBlock, blocks, stage_of

CRITERIA = ("bn_gamma", "l1_norm", "fmap_rank")


def kept_channels(width: int, ratio: float) -> int:
    """Channels a block keeps when ``ratio`` of its ``width`` inner channels are pruned (at least 1)."""
    return max(1, int(round(width * (1.0 - ratio))))


# -- channel scores ---------------------------------------------------------------------------------
def _gamma(block: BasicBlock) -> torch.Tensor:
    return block.bn1.weight.detach().abs().float()


def _l1(block: BasicBlock) -> torch.Tensor:
    return block.conv1.weight.detach().abs().float().sum(dim=(1, 2, 3))


def _fmap_ranks(model: nn.Module, calibration: torch.Tensor) -> dict[str, torch.Tensor]:
    """Average rank of every block's inner feature maps (relu(bn1(conv1(x))), one H x W matrix per
    channel and image) over the calibration images, from one forward pass."""
    maps: dict[str, torch.Tensor] = {}
    handles = []
    for name, block in blocks(model):
        def hook(m, inputs, out, _name=name):
            maps[_name] = torch.linalg.matrix_rank(F.relu(out).float()).float().mean(dim=0)
        handles.append(block.bn1.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(calibration)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return maps


def channel_scores(model: nn.Module, criterion: str, calibration: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Block id -> one importance score per inner channel (higher = keep)."""
    if criterion == "bn_gamma":
        return {name: _gamma(b) for name, b in blocks(model)}
    if criterion == "l1_norm":
        return {name: _l1(b) for name, b in blocks(model)}
    if criterion == "fmap_rank":
        if calibration is None:
            raise ValueError("fmap_rank scores feature maps: it needs calibration images")
        ranks = _fmap_ranks(model, calibration)
        out = {}
        for name, b in blocks(model):
            gamma = _gamma(b)
            # a tie-break below the rank's own resolution (1 / calibration images)
            out[name] = ranks[name] + gamma / (gamma.max() + 1e-12) / (10.0 * len(calibration))
        return out
    raise ValueError(f"unknown channel criterion {criterion!r}; known: {', '.join(CRITERIA)}")


# -- surgery -------------------------------------------------------------------------------------
def _sub_conv(conv: nn.Conv2d, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Conv2d:
    w = conv.weight.detach()
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None:
        w = w[:, in_idx]
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None,
                    device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach() if out_idx is None else conv.bias.detach()[out_idx])
    return new.train(conv.training)


def _sub_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), eps=bn.eps, momentum=bn.momentum, device=bn.weight.device, dtype=bn.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(bn.weight.detach()[idx])
        new.bias.copy_(bn.bias.detach()[idx])
        new.running_mean.copy_(bn.running_mean[idx])
        new.running_var.copy_(bn.running_var[idx])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def prune_block_channels(block: BasicBlock, keep: torch.Tensor) -> None:
    """Keep only the inner channels ``keep`` (indices, ascending): conv1 rows, bn1 entries, conv2 columns."""
    keep = torch.as_tensor(keep, dtype=torch.long, device=block.conv1.weight.device).sort().values
    block.conv1 = _sub_conv(block.conv1, out_idx=keep)
    block.bn1 = _sub_bn(block.bn1, keep)
    block.conv2 = _sub_conv(block.conv2, in_idx=keep)


def prune_channels(model: nn.Module, ratios: Mapping[int, float], criterion: str,
                   calibration: torch.Tensor | None = None) -> dict[str, Any]:
    """Prune ``ratios[stage]`` of the inner channels of every block in that stage (stages from 1),
    keeping the channels ``criterion`` scores highest. Returns what it did, per block."""
    scores = channel_scores(model, criterion, calibration)
    report: dict[str, Any] = {}
    for name, block in blocks(model):
        ratio = ratios.get(stage_of(name), 0.0)
        if ratio <= 0:
            continue
        s = scores[name]
        k = kept_channels(len(s), ratio)
        keep = torch.topk(s, k).indices.sort().values
        prune_block_channels(block, keep)
        report[name] = {"before": len(s), "after": k, "kept": keep.tolist(), "scores": [round(float(v), 5) for v in s]}
    return report


def block_importance(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Removable block id -> increase of the calibration cross-entropy when the block is bypassed."""
    was_training = model.training
    model.eval()
    scores: dict[str, float] = {}
    try:
        with torch.no_grad():
            base = float(F.cross_entropy(model(images).float(), labels))
            for s, stage in enumerate(model.stages):
                for key in list(stage.keys()):
                    block = stage[key]
                    if not block.removable:
                        continue
                    stage[key] = nn.Identity()
                    try:
                        loss = float(F.cross_entropy(model(images).float(), labels))
                    finally:
                        stage[key] = block
                    scores[f"s{s + 1}.{key}"] = round(loss - base, 6)
    finally:
        model.train(was_training)
    return scores


def remove_blocks(model: nn.Module, block_ids: list[str]) -> None:
    """Delete these (removable) blocks from their stages."""
    for name in block_ids:
        stage, key = name.split(".")
        module_dict = model.stages[int(stage[1:]) - 1]
        if not module_dict[key].removable:
            raise ValueError(f"block {name} changes shape (projection shortcut): it cannot be removed")
        del module_dict[key]


def prune_blocks(model: nn.Module, n: int, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Remove the ``n`` least important removable blocks."""
    scores = block_importance(model, images, labels)
    if n > len(scores):
        raise ValueError(f"{n} blocks to remove, but only {len(scores)} have an identity shortcut")
    removed = sorted(scores, key=lambda b: (scores[b], b))[:n]
    remove_blocks(model, removed)
    return {"scores": scores, "removed": sorted(removed)}


def recalibrate_batch_norm(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> None:
    """Re-estimate every batch norm's running mean and variance on ``images`` (exact averages over
    them, no gradients, weights untouched)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                chunk = images[start: start + batch_size]
                if len(chunk) > 1 or start == 0:
                    model(chunk)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)


def hybrid_prune(model: nn.Module, ratios: Mapping[int, float], criterion: str, n_blocks: int, order: str,
                 images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Channel pruning and block removal in ``order`` ("channels_first" | "blocks_first"), each step
    scored on the model the previous one left; parameters and MACs per image measured after each."""
    if order not in ("channels_first", "blocks_first"):
        raise ValueError(f"unknown pruning order {order!r}")
    want_channels = any(r > 0 for r in ratios.values())
    steps = ["channels", "blocks"] if order == "channels_first" else ["blocks", "channels"]
    report: dict[str, Any] = {"criterion": None, "channels": {}, "blocks": {"scores": {}, "removed": []}, "steps": []}
    probe = images[: min(len(images), 8)]
    report["before"] = {k: v for k, v in measure(model, probe).items() if k in ("parameters", "macs_per_image")}
    for step in steps:
        if step == "channels" and want_channels:
            report["channels"] = prune_channels(model, ratios, criterion, images)
            report["criterion"] = criterion
        elif step == "blocks" and n_blocks > 0:
            report["blocks"] = prune_blocks(model, n_blocks, images, labels)
        else:
            continue
        recalibrate_batch_norm(model, images)
        after = measure(model, probe)
        report["steps"].append({"step": step, "parameters": after["parameters"], "macs_per_image": after["macs_per_image"]})
    return report
