"""Find and edit the stack of transformer blocks of any Hugging Face-style model.

Works by structure rather than by model name: the block stack is the homogeneous
``nn.ModuleList`` whose length equals the config's layer count (BERT/MiniLM ``encoder.layer``,
LLaMA ``model.layers``, GPT-2 ``transformer.h`` ...).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from greenknobs.errors import KnobError

_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def config_layer_count(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in _LAYER_COUNT_KEYS:
        if config is not None and isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def find_layer_stack(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """Return (parent module, attribute name, ModuleList) of the model's block stack."""
    expected = config_layer_count(model)
    best: tuple[nn.Module, str, nn.ModuleList] | None = None
    for _, parent in model.named_modules():
        for attr, child in parent.named_children():
            if not isinstance(child, nn.ModuleList) or len(child) == 0:
                continue
            if len({type(m) for m in child}) != 1:
                continue
            if expected is not None and len(child) == expected:
                return parent, attr, child
            if best is None or len(child) > len(best[2]):
                best = (parent, attr, child)
    if best is None:
        raise KnobError(f"no stack of transformer blocks found in {type(model).__name__}")
    return best


def layer_count(model: nn.Module) -> int:
    return len(find_layer_stack(model)[2])


def keep_layers(model: nn.Module, keep: Sequence[int]) -> list[int]:
    """Keep only the blocks at indices ``keep`` (in order); return the removed indices.

    Updates the config's layer count and per-layer metadata so the pruned model saves and
    reloads with ``from_pretrained`` and its KV cache indexes the right slots.
    """
    parent, attr, stack = find_layer_stack(model)
    n = len(stack)
    keep = list(keep)
    if not keep:
        raise KnobError("cannot remove every layer")
    if sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= n:
        raise KnobError(f"invalid layer indices to keep {keep} for a {n}-layer model")
    setattr(parent, attr, nn.ModuleList([stack[i] for i in keep]))
    config = getattr(model, "config", None)
    if config is not None:
        for key in _LAYER_COUNT_KEYS:
            if isinstance(getattr(config, key, None), int):
                setattr(config, key, len(keep))
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == n:
            config.layer_types = [layer_types[i] for i in keep]
    for new_index, block in enumerate(getattr(parent, attr)):
        for module in block.modules():
            if hasattr(module, "layer_idx") and isinstance(module.layer_idx, int):
                module.layer_idx = new_index
    return [i for i in range(n) if i not in keep]


def remove_layers(model: nn.Module, remove: Sequence[int]) -> list[int]:
    n = layer_count(model)
    bad = [i for i in remove if not 0 <= i < n]
    if bad:
        raise KnobError(f"layer indices {bad} out of range for a {n}-layer model")
    return keep_layers(model, [i for i in range(n) if i not in set(remove)])


@contextmanager
def skipping_layers(model: nn.Module, positions: set[int]) -> Iterator[None]:
    """Temporarily run the model without the blocks at ``positions`` (their compute is really skipped).

    Only the block list is swapped; the config and layer indices stay as they are, so this is
    for cache-free scoring passes (SLEB-style), not for a model that is saved or generates.
    """
    parent, attr, stack = find_layer_stack(model)
    setattr(parent, attr, nn.ModuleList([b for i, b in enumerate(stack) if i not in positions]))
    try:
        yield
    finally:
        setattr(parent, attr, stack)
