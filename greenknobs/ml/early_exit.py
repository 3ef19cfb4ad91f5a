"""Confidence-based early exit for classifiers (DYNAMAX-style): stop at an intermediate block.

An exit head reads the first token's hidden state after block k and is trained alongside the
model in the training phase. At inference every batch first runs only blocks 1..k (the block
stack is temporarily truncated, so the later blocks really do not run); rows whose exit head is
at least ``threshold`` confident take that answer, the rest run the full model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from greenknobs.errors import KnobError
from greenknobs.ml import layers


class ExitHead(nn.Module):
    def __init__(self, hidden: int, num_labels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, num_labels))

    def forward(self, first_token_hidden: torch.Tensor) -> torch.Tensor:
        return self.net(first_token_hidden)


def exit_block(model: nn.Module, depth: float) -> int:
    """Number of blocks before the exit: round(depth x L), at least 1 and fewer than L."""
    n = layers.layer_count(model)
    k = max(1, round(depth * n))
    if k >= n:
        raise KnobError(f"an exit after {k} of {n} blocks would not skip anything; the model is too shallow")
    return k


@contextlib.contextmanager
def truncated(model: nn.Module, k: int) -> Iterator[nn.Module]:
    """Run ``model`` with only its first ``k`` blocks (same weights), restoring the stack afterwards."""
    parent, attr, stack = layers.find_layer_stack(model)
    config = getattr(model, "config", None)
    saved = {key: getattr(config, key) for key in ("num_hidden_layers", "n_layer") if isinstance(getattr(config, key, None), int)}
    setattr(parent, attr, nn.ModuleList(list(stack)[:k]))
    for key in saved:
        setattr(config, key, k)
    try:
        yield model
    finally:
        setattr(parent, attr, stack)
        for key, v in saved.items():
            setattr(config, key, v)
