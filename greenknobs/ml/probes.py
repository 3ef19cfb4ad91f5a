"""Small instruments that read what really ran, for knob verification.

They observe the forward pass itself (functions called, modules entered), so the evidence
cannot be a flag that somebody set and nobody read.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def count_sdpa_calls() -> Iterator[list[int]]:
    """Count calls of torch's fused attention (what transformers' "sdpa" implementation calls)."""
    counter = [0]
    original = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        counter[0] += 1
        return original(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = counted
    try:
        yield counter
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


@contextlib.contextmanager
def count_forward_calls(module: nn.Module) -> Iterator[list[int]]:
    """Count how often ``module``'s forward starts (twice per step when checkpointed: once more to recompute).

    A pre-hook, because non-reentrant checkpointing stops the recomputation as soon as it has
    what backward needs, so the forward may never reach its end the second time."""
    counter = [0]

    def hook(_m, _inp):
        counter[0] += 1

    handle = module.register_forward_pre_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


def checksum(module: nn.Module) -> str:
    """A digest of every parameter: equal before and after training means nothing was updated."""
    h = hashlib.sha1()
    for name, p in sorted(module.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def floating_dtype(model: nn.Module) -> str:
    """The storage dtype of *every* floating-point parameter: one dtype, or ``mixed(...)`` with counts
    when they differ (a cast that missed some weights shows up here)."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[str(p.dtype)] = counts.get(str(p.dtype), 0) + 1
    if not counts:
        return "none"
    if len(counts) == 1:
        return next(iter(counts))
    return "mixed(" + ", ".join(f"{d}x{n}" for d, n in sorted(counts.items())) + ")"
