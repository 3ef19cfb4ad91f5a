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


@contextlib.contextmanager
def block_outputs(model: nn.Module) -> Iterator[list[torch.Tensor | None]]:
    """The first token's output of every block during the forward passes inside the block."""
    _, _, stack = layers.find_layer_stack(model)
    outputs: list[torch.Tensor | None] = [None] * len(stack)

    def hook(i: int):
        def record(_module, _args, out):
            hidden = out if isinstance(out, torch.Tensor) else out[0]
            outputs[i] = hidden[:, 0].detach()
        return record

    handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(stack)]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


def blocks_before(outputs: list[torch.Tensor | None], exit_input: torch.Tensor) -> int:
    """How many blocks ran before the state an exit head read: the block whose output it is
    (0 when it matches none). Evidence from the forward pass itself, not from the setting."""
    for i, out in enumerate(outputs):
        if out is not None and out.shape == exit_input.shape and torch.equal(out, exit_input.detach()):
            return i + 1
    return 0
