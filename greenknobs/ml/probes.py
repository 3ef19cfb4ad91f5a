"""Small instruments that read what really ran, for knob verification.

They observe the forward pass itself (functions called, modules entered), so the evidence
cannot be a flag that somebody set and nobody read.
"""

from __future__ import annotations

import hashlib

from torch import nn


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
