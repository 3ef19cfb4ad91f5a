"""Evidence hooks on the objects user code hands over: what the computation really did.

Knobs install these when a trial receives a model, an optimizer, a DataLoader or a tokenizer
(``greenknobs.trial``). They read the computation itself -- the batch a forward pass received,
the dtype of its output, the blocks that ran, the learning rate an optimizer stepped with, the
passes a training loop made over its data -- so a knob whose mechanism did nothing cannot pass
its verification by reading back its own setting.

Hooks are plain PyTorch hooks (forward pre/post hooks with kwargs, optimizer step pre-hooks);
DataLoaders and tokenizers get a thin subclass swapped in (``__class__``) so every pass and
every call is seen without the user changing how they use them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from greenknobs.ml import layers

Handle = Any  # torch.utils.hooks.RemovableHandle


# -- what a forward pass received and produced -----------------------------------------------------
def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    found = [v for v in kwargs.values() if torch.is_tensor(v)] + [a for a in args if torch.is_tensor(a)]
    for v in (*args, *kwargs.values()):  # a batch handed over as one mapping (model(**batch) is the usual way)
        if isinstance(v, dict):
            found += [t for t in v.values() if torch.is_tensor(t)]
    return found


def batch_rows(args: tuple, kwargs: dict) -> int | None:
    """Rows in the batch a forward pass received (dim 0 of its first tensor input)."""
    for t in _tensors(args, kwargs):
        if t.dim() >= 1:
            return int(t.shape[0])
    return None


def sequence_tokens(args: tuple, kwargs: dict) -> int | None:
    """The longest real (unpadded) sequence in a token batch, in tokens; None for non-token inputs."""
    mask: Any = kwargs.get("attention_mask")
    if torch.is_tensor(mask) and mask.dim() == 2:
        return int(mask.sum(1).max()) if mask.numel() else 0
    ids: Any = kwargs.get("input_ids", args[0] if args and torch.is_tensor(args[0]) and not args[0].is_floating_point() else None)
    if torch.is_tensor(ids) and ids.dim() == 2 and not ids.is_floating_point():
        return int(ids.shape[1])
    return None


def output_dtype(output: Any) -> str | None:
    """The dtype of what a forward pass returned: HF ``logits``, else the first floating tensor."""
    logits: Any = getattr(output, "logits", None)
    if torch.is_tensor(logits):
        return str(logits.dtype)
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else (output,)
    for t in items:
        if torch.is_tensor(t) and t.is_floating_point():
            return str(t.dtype)
    return None


def grad_enabled() -> bool:
    return torch.is_grad_enabled()


def threads() -> dict[str, int]:
    """The thread pools this forward pass runs with (read while it runs)."""
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def watch_forward(model: nn.Module, pre: Callable[[nn.Module, tuple, dict], None],
                  post: Callable[[nn.Module, tuple, dict, Any], None]) -> list[Handle]:
    """One pre- and one post-hook on the model's own call (outside any compiled forward)."""
    return [model.register_forward_pre_hook(lambda m, a, k: pre(m, a, k), with_kwargs=True),
            model.register_forward_hook(lambda m, a, k, o: post(m, a, k, o), with_kwargs=True)]


def count_calls(modules: list[nn.Module]) -> tuple[list[int], list[Handle]]:
    """Forward entries per module (a pre-hook: a checkpointed recompute counts too)."""
    counts = [0] * len(modules)
    handles = []
    for i, m in enumerate(modules):
        def hook(_m, _a, i=i):
            counts[i] += 1
        handles.append(m.register_forward_pre_hook(hook))
    return counts, handles


@contextlib.contextmanager
def counting_sdpa() -> Iterator[list[int]]:
    """Count calls of torch's fused attention while the block runs."""
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


def linear_modules(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(int8 dynamic Linear modules, float nn.Linear modules) inside ``model``."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    quantized = [m for m in model.modules() if isinstance(m, DynamicQuantizedLinear)]
    floats = [m for m in model.modules() if type(m) is nn.Linear]
    return quantized, floats


def linear_output_dtypes(model: nn.Module) -> tuple[set[str], list[Handle]]:
    """The dtypes the model's Linear layers compute in, filled as a forward runs (remove the handles)."""
    seen: set[str] = set()
    handles = [m.register_forward_hook(lambda _m, _a, out: seen.add(str(out.dtype)) if torch.is_tensor(out) else None)
               for m in model.modules() if isinstance(m, nn.Linear)]
    return seen, handles


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's stack of repeated blocks (transformer layers, residual blocks)."""
    return list(layers.find_layer_stack(model)[2])


def has_block_stack(model: nn.Module) -> bool:
    try:
        layers.find_layer_stack(model)
    except Exception:
        return False
    return True


def block_checksums(model: nn.Module) -> list[str]:
    from greenknobs.ml.probes import checksum

    return [checksum(b) for b in blocks(model)]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def floating_dtype(model: nn.Module) -> str:
    from greenknobs.ml.probes import floating_dtype as fd

    return fd(model)


# -- optimizers --------------------------------------------------------------------------------------
def inner_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer itself (accelerate and others wrap it in ``.optimizer``)."""
    while not hasattr(optimizer, "register_step_pre_hook") and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def on_step(optimizer: Any, fn: Callable[[torch.optim.Optimizer], None]) -> Handle:
    """Call ``fn(optimizer)`` just before every step: the rates read then are the ones stepped with."""
    opt = inner_optimizer(optimizer)
    return opt.register_step_pre_hook(lambda o, _a, _k: fn(o))


def is_optimizer(obj: Any) -> bool:
    return isinstance(inner_optimizer(obj), torch.optim.Optimizer)


# -- DataLoaders: passes and batches, seen from inside the loop ----------------------------------------
class _LoaderWatch:
    def __init__(self) -> None:
        self.on_batch: list[Callable[[Any], None]] = []
        self.on_pass: list[Callable[[int], None]] = []
        self.cap: int | None = None  # smoke runs: at most this many batches per pass


_WATCHED_LOADERS: dict[type, type] = {}


def _register(cls: type) -> type:
    """Make a swapped-in subclass importable by name, so pickling (datasets' fingerprints, the phase
    store) finds it like any other class."""
    if globals().get(cls.__name__, cls) is not cls:
        cls.__name__ = cls.__qualname__ = f"{cls.__name__}_{id(cls):x}"
    globals()[cls.__name__] = cls
    return cls


def _watched_iter(self):
    watch: _LoaderWatch | None = self.__dict__.get("_greenknobs_watch")
    if watch is None:  # unpickled from the phase store: watched no more until handed over again
        yield from type(self).__mro__[1].__iter__(self)
        return
    n = 0
    for batch in type(self).__mro__[1].__iter__(self):
        n += 1
        for fn in watch.on_batch:
            fn(batch)
        yield batch
        if watch.cap is not None and n >= watch.cap:
            break
    for fn in watch.on_pass:  # reached only when the consumer took the whole pass
        fn(n)


def watch_loader(loader: Any) -> _LoaderWatch:
    """Swap in a subclass that reports every batch and every complete pass (idempotent)."""
    existing = loader.__dict__.get("_greenknobs_watch")
    if existing is not None:
        return existing
    base = type(loader)
    cls = _WATCHED_LOADERS.get(base)
    if cls is None:
        cls = _register(type(f"Watched{base.__name__}", (base,), {"__iter__": _watched_iter, "__module__": __name__}))
        _WATCHED_LOADERS[base] = cls
    watch = _LoaderWatch()
    object.__setattr__(loader, "_greenknobs_watch", watch)
    loader.__class__ = cls
    return watch


def is_loader(obj: Any) -> bool:
    return isinstance(obj, torch.utils.data.DataLoader)


def loader_rows(loader: Any) -> int | None:
    """Rows in the loader's dataset, when it knows."""
    try:
        return len(loader.dataset)
    except (TypeError, AttributeError):
        return None


def set_batch_size(loader: torch.utils.data.DataLoader, size: int) -> torch.utils.data.DataLoader:
    """The loader with ``size`` rows per batch: in place when its batch sampler has a batch size
    (torch's own, and the shipped pipelines'), else a new DataLoader with the same settings."""
    sampler = loader.batch_sampler
    if sampler is not None and hasattr(sampler, "batch_size"):
        sampler.batch_size = size
        return loader
    if loader.batch_size is None:
        raise ValueError("the DataLoader batches by a custom batch sampler without a batch_size attribute")
    return torch.utils.data.DataLoader(
        loader.dataset, batch_size=size, sampler=loader.sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
        persistent_workers=loader.persistent_workers)


# -- tokenizers: every call truncates to the knob's length ------------------------------------------
_CAPPED_TOKENIZERS: dict[type, type] = {}


class TokenizerWatch:
    def __init__(self, limit: int | None) -> None:
        self.limit = limit  # None: observe only (the mechanism is off)
        self.calls = 0
        self.outputs = 0
        self.longest = 0
        self.at_limit = 0


def _capped_call(self, *args, **kwargs):
    watch: TokenizerWatch = self.__dict__["_greenknobs_watch"]
    if watch.limit is not None:
        kwargs["truncation"] = True
        kwargs["max_length"] = watch.limit
    out = type(self).__mro__[1].__call__(self, *args, **kwargs)
    ids = out.get("input_ids") if hasattr(out, "get") else None
    if ids is not None:
        watch.calls += 1
        for n in _real_lengths(ids, out.get("attention_mask")):
            watch.outputs += 1
            watch.longest = max(watch.longest, n)
            watch.at_limit += int(watch.limit is not None and n >= watch.limit)
    return out


def _real_lengths(ids: Any, mask: Any) -> list[int]:
    """Tokens per encoded text, padding excluded (from the attention mask when there is one)."""
    source = mask if mask is not None else ids
    if torch.is_tensor(source):
        if mask is not None:
            return [int(n) for n in source.reshape(-1, source.shape[-1]).sum(-1)]
        return [int(source.shape[-1])] * (source.numel() // max(source.shape[-1], 1))
    rows = source if source and isinstance(source[0], list) else [source]
    return [int(sum(r)) if mask is not None else len(r) for r in rows]


def cap_tokenizer(tokenizer: Any, limit: int | None) -> TokenizerWatch:
    """Make every call of ``tokenizer`` truncate to ``limit`` tokens (None: only watch)."""
    existing = tokenizer.__dict__.get("_greenknobs_watch")
    if existing is not None:
        existing.limit = limit if limit is not None else existing.limit
        return existing
    base = type(tokenizer)
    cls = _CAPPED_TOKENIZERS.get(base)
    if cls is None:
        cls = _register(type(f"Capped{base.__name__}", (base,), {"__call__": _capped_call, "__module__": __name__}))
        _CAPPED_TOKENIZERS[base] = cls
    watch = TokenizerWatch(limit)
    tokenizer.__dict__["_greenknobs_watch"] = watch
    if limit is not None and hasattr(tokenizer, "model_max_length"):
        tokenizer.model_max_length = limit
    tokenizer.__class__ = cls
    return watch


# -- pickling a model for the phase store: without the trial's hooks ------------------------------------
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks_with_kwargs")


@contextlib.contextmanager
def hooks_removed(objects: list[Any]) -> Iterator[None]:
    """Every nn.Module inside ``objects`` without forward hooks, and every watched DataLoader without
    its watch, while the block runs (they hold closures over the live trial, which neither pickle
    nor belong in a stored output)."""
    saved = []
    for obj in _walk(objects):
        if isinstance(obj, torch.utils.data.DataLoader) and "_greenknobs_watch" in obj.__dict__:
            saved.append((obj, "_greenknobs_watch", obj.__dict__.pop("_greenknobs_watch")))
            continue
        if isinstance(obj, nn.Module):
            for m in obj.modules():
                for attr in _HOOK_DICTS:
                    hooks = m.__dict__.get(attr)
                    if hooks:
                        saved.append((m, attr, hooks))
                        m.__dict__[attr] = type(hooks)()
    try:
        yield
    finally:
        for m, attr, hooks in saved:
            m.__dict__[attr] = hooks


def _walk(objects: list[Any], depth: int = 3) -> Iterator[Any]:
    """The objects and what plain containers (tuples, lists, dicts) inside them hold."""
    for obj in objects:
        yield obj
        if depth and isinstance(obj, (tuple, list)):
            yield from _walk(list(obj), depth - 1)
        elif depth and isinstance(obj, dict):
            yield from _walk(list(obj.values()), depth - 1)


# -- mechanisms that hold only while a phase runs (undone when it ends) -----------------------------------
def _override_forward(model: nn.Module, forward: Callable[..., Any]) -> Callable[[], None]:
    """Replace ``model.forward`` on the instance (hooks still run around it); return the undo."""
    had = "forward" in model.__dict__
    previous = model.__dict__.get("forward")
    model.forward = forward

    def restore() -> None:
        if had:
            model.forward = previous
        else:
            model.__dict__.pop("forward", None)

    return restore


def replace_forward(model: nn.Module, forward: Callable[..., Any]) -> Callable[[], None]:
    """Serve ``model`` with ``forward`` (an inference engine's) until the returned undo is called."""
    return _override_forward(model, forward)


def autocast_forward(model: nn.Module, device: str, precision: str) -> Callable[[], None]:
    """Run the model's forward under autocast (bf16/fp16) until the returned undo is called."""
    from greenknobs.ml.precision import DTYPES

    inner = model.forward

    def forward(*args, **kwargs):
        with torch.autocast(device_type=device, dtype=DTYPES[precision]):
            return inner(*args, **kwargs)

    return _override_forward(model, forward)


def compile_forward(model: nn.Module, backend: str) -> tuple[Callable[[], None], dict[str, Any]]:
    """Compile the model's forward (its root hooks stay outside the graph); the undo and live stats."""
    from greenknobs.ml.compile import compile_model

    compiled, stats = compile_model(model.forward, backend)
    return _override_forward(model, compiled), stats


def checkpoint_blocks(model: nn.Module) -> Callable[[], None]:
    """Gradient checkpointing: a Hugging Face model's own switch, or every block's forward wrapped
    in non-reentrant ``torch.utils.checkpoint`` for any other model with a block stack."""
    if getattr(model, "supports_gradient_checkpointing", False) and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.gradient_checkpointing_disable
    undo = []
    for block in blocks(model):
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return torch.utils.checkpoint.checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        undo.append(_override_forward(block, forward))

    def restore() -> None:
        for u in undo:
            u()

    return restore


def top_block_entry(model: nn.Module) -> nn.Module:
    """What a forward pre-hook must watch to see the top block recomputed: its first sub-module
    (transformers checkpoints a block's ``forward``, not its ``__call__``)."""
    top = blocks(model)[-1]
    return next(top.children(), top)


def freeze_bottom(model: nn.Module, k: int) -> None:
    """No gradients for the input embeddings and the bottom ``k`` blocks."""
    stack = blocks(model)
    if k >= len(stack):
        from greenknobs.errors import KnobError

        raise KnobError(f"training.freeze_layers={k} would freeze all {len(stack)} blocks")
    frozen = list(stack)[:k]
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    if embeddings is not None:
        frozen.append(embeddings)
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
