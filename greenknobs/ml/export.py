"""Export a served PyTorch model to ONNX once, from the inputs of its first serving call.

The graph is traced with PyTorch's own exporter (``torch.onnx.export``, the TorchScript path:
~0.6 s for a tiny BERT where the dynamo path takes ~4 s on 2 cores); every input dimension is
dynamic, so one graph serves every batch size and padded length. The engines (onnx_engine,
openvino_engine) read the file; nothing here imports them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from greenknobs.ml import instruments


@dataclass(frozen=True)
class Signature:
    """How the served model was called: tensor inputs by name (positional ones as ``arg<i>``),
    the constant keyword arguments beside them, and whether the output carried ``.logits``."""

    names: tuple[str, ...]
    constants: dict[str, Any]
    logits_attr: bool


class _Traced(nn.Module):
    """The model's own forward (not ``__call__``: the trial's root hooks stay out of the graph),
    called as the served code called it, returning the one tensor that is served."""

    def __init__(self, model: nn.Module, forward: Any, signature: Signature):
        super().__init__()
        self.model, self._forward, self._sig = model, forward, signature

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        args = [t for n, t in zip(self._sig.names, tensors) if n.startswith("arg")]
        kwargs = {n: t for n, t in zip(self._sig.names, tensors) if not n.startswith("arg")}
        return served_tensor(self._forward(*args, **kwargs, **self._sig.constants))


def served_tensor(output: Any) -> torch.Tensor:
    """What a prediction is read from: HF ``.logits``, else the output itself or its first tensor."""
    logits = getattr(output, "logits", None)
    if torch.is_tensor(logits):
        return logits
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    raise TypeError(f"cannot export a model whose forward returns {type(output).__name__}: an exported engine serves "
                    f"a tensor, `.logits`, or a tuple whose first item is a tensor")


def signature(args: tuple, kwargs: dict, output_has_logits: bool) -> tuple[Signature, list[torch.Tensor]]:
    """The call's tensor inputs (ordered) and its constant keyword arguments."""
    for i, a in enumerate(args):
        if not torch.is_tensor(a):
            raise TypeError(f"cannot export a forward called with a positional {type(a).__name__} (argument {i})")
    names = [f"arg{i}" for i in range(len(args))] + [k for k, v in kwargs.items() if torch.is_tensor(v)]
    tensors = list(args) + [v for v in kwargs.values() if torch.is_tensor(v)]
    constants = {k: v for k, v in kwargs.items() if not torch.is_tensor(v) and k != "labels"}
    return Signature(tuple(names), constants, output_has_logits), tensors


def export_onnx(model: nn.Module, forward: Any, args: tuple, kwargs: dict, path: Path,
                output_has_logits: bool = True) -> tuple[Signature, dict[str, Any]]:
    """Write ``model`` (called as ``forward(*args, **kwargs)``) to ``path`` as ONNX; the signature
    and facts (seconds, bytes, opset). ``labels`` are dropped: a served graph computes no loss."""
    kwargs = {k: v for k, v in kwargs.items() if k != "labels"}
    sig, tensors = signature(args, kwargs, output_has_logits)
    traced = _Traced(model, forward, sig).eval()
    was_training = model.training
    start = time.perf_counter()
    # the knobs' hooks stay out of the trace: exporting is not serving
    with instruments.hooks_removed([model]), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(traced, tuple(tensors), str(path), input_names=list(sig.names), output_names=["output"],
                          dynamic_axes={n: {d: f"{n}_{d}" for d in range(t.dim())} for n, t in zip(sig.names, tensors)}
                          | {"output": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    model.train(was_training)  # the exporter restores the wrapper's mode onto the model: put the model's back
    return sig, {"export_s": round(time.perf_counter() - start, 3), "onnx_bytes": path.stat().st_size, "opset": OPSET,
                 "exporter": "torch.onnx (TorchScript)"}


OPSET = 17
