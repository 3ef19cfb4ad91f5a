"""Calibration batches and per-layer hidden-state statistics, captured with hooks on the block stack.

h_i is the hidden state entering block i (i = 0..L-1); h_L is the output of the last block
(before any final norm). Statistics are accumulated batch by batch over non-padding tokens, so
no full activation tensor is kept.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from greenknobs.errors import KnobError
from greenknobs.ml.layers import find_layer_stack


@dataclass
class Calibration:
    """Padded batches of token ids; ``labels`` holds one class label per sequence when known."""

    batches: list[tuple[torch.Tensor, torch.Tensor]]  # (input_ids, attention_mask)
    labels: list[torch.Tensor] | None = None

    @property
    def n_samples(self) -> int:
        return sum(ids.shape[0] for ids, _ in self.batches)

    @property
    def n_tokens(self) -> int:
        return int(sum(mask.sum() for _, mask in self.batches))


def build_calibration(rows: Sequence[Mapping[str, Any]], pad_id: int, n_samples: int, max_len: int = 128,
                      batch_size: int = 8, seed: int = 0, label_key: str = "label") -> Calibration:
    """A seeded sample of ``n_samples`` rows (dicts with ``input_ids``), truncated and padded."""
    if not rows:
        raise KnobError("layer pruning needs calibration data, but the training split is empty")
    picked = random.Random(seed).sample(list(rows), min(n_samples, len(rows)))
    batches, labels = [], []
    with_labels = all(label_key in r for r in picked)
    for start in range(0, len(picked), batch_size):
        chunk = picked[start : start + batch_size]
        seqs = [list(r["input_ids"])[:max_len] for r in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        batches.append((ids, mask))
        if with_labels:
            labels.append(torch.tensor([int(r[label_key]) for r in chunk]))
    return Calibration(batches, labels if with_labels else None)


def run_model(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, **kwargs: Any):
    """One forward pass without a KV cache (calibration never generates)."""
    device = next(model.parameters()).device
    if getattr(model.config, "use_cache", None) is not None:
        kwargs.setdefault("use_cache", False)
    return model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)


def hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden state a block was called with (first positional argument or ``hidden_states=``)."""
    return args[0] if args else kwargs["hidden_states"]


def first_tensor(output: Any) -> torch.Tensor:
    """A block returns its hidden state alone (transformers 5) or first in a tuple (older code)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def replace_first(output: Any, hidden: torch.Tensor) -> Any:
    return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])


@contextmanager
def capture_stream(model: nn.Module) -> Iterator[list[torch.Tensor | None]]:
    """Within the block, ``states[i]`` is h_i after each forward (i = 0..L)."""
    _, _, stack = find_layer_stack(model)
    states: list[torch.Tensor | None] = [None] * (len(stack) + 1)
    handles = []
    for i, block in enumerate(stack):
        def pre(mod, args, kwargs, i=i):
            states[i] = hidden_arg(args, kwargs)
        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
    handles.append(stack[-1].register_forward_hook(lambda mod, args, out: states.__setitem__(-1, first_tensor(out))))
    try:
        yield states
    finally:
        for h in handles:
            h.remove()


def last_token(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each sequence's last non-padding token: (B, H)."""
    idx = mask.sum(1).clamp(min=1) - 1
    return h[torch.arange(h.shape[0]), idx.to(h.device)]


def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(h.device, h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


@dataclass
class LayerStats:
    """Calibration statistics of one model state (L blocks, L+1 stream positions)."""

    cos_mean: torch.Tensor  # (L,)   mean over tokens of cos(h_i, h_{i+1})
    abs_mean: torch.Tensor  # (L+1, H) mean over tokens of |h_i[c]|
    last: torch.Tensor  # (L+1, N, H) last-token hidden states
    pooled: torch.Tensor  # (N, H) mean-pooled h_L (the representation a classifier head reads)
    n_tokens: int


@torch.no_grad()
def layer_stats(model: nn.Module, calibration: Calibration) -> LayerStats:
    was_training = model.training
    model.eval()
    cos_sum: torch.Tensor | None = None
    abs_sum: torch.Tensor | None = None
    lasts: list[list[torch.Tensor]] = []
    pooled: list[torch.Tensor] = []
    tokens = 0
    with capture_stream(model) as states:
        for ids, mask in calibration.batches:
            run_model(model, ids, mask)
            hs = torch.stack([s.float() for s in states if s is not None])  # (L+1, B, T, H): every hook fired
            valid = mask.to(hs.device).bool()
            cos = torch.nn.functional.cosine_similarity(hs[:-1], hs[1:], dim=-1)  # (L, B, T)
            c = (cos * valid).sum((1, 2))
            a = (hs.abs() * valid.unsqueeze(-1)).sum((1, 2))
            cos_sum = c if cos_sum is None else cos_sum + c
            abs_sum = a if abs_sum is None else abs_sum + a
            tokens += int(valid.sum())
            lasts.append([last_token(h, mask) for h in hs])
            pooled.append(mean_pool(hs[-1], mask))
    model.train(was_training)
    last = torch.stack([torch.cat([b[i] for b in lasts]) for i in range(len(lasts[0]))])
    assert cos_sum is not None and abs_sum is not None, "no calibration batch"
    return LayerStats(cos_sum / tokens, abs_sum / tokens, last, torch.cat(pooled), tokens)
