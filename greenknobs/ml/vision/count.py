"""What a CNN is, read off the forward pass that ran: multiply-accumulates per image, the inner width
of every residual block (the channels of the tensor its first convolution produced), which blocks
ran, the input resolution, and -- for a quantised model -- how many convolutions ran in int8.

Forward hooks on the convolution and linear modules themselves, so the figures describe the
model that computed, whatever its history (pruned, fine-tuned, quantised to an FX graph).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

_BLOCK_CONV1 = re.compile(r"^stages\.(\d+)\.(b\d+)\.conv1$")


def parameter_count(model: nn.Module) -> int:
    """Parameters of a float model (weights, biases, batch-norm affine terms)."""
    return sum(p.numel() for p in model.parameters())


def _is_conv(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("in_channels", "out_channels", "kernel_size", "groups"))


def _is_linear(m: nn.Module) -> bool:
    return hasattr(m, "in_features") and hasattr(m, "out_features")


def _quantized(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.ao.nn.quantized") or type(m).__module__.startswith(
        "torch.ao.nn.intrinsic.quantized")


@dataclass
class ForwardRecord:
    """Filled in by ``record_forward`` during the first forward pass inside it."""

    images: int = 0
    macs: int = 0
    input_shape: list[int] = field(default_factory=list)  # (C, H, W) of the batch the model was fed
    block_widths: dict[str, int] = field(default_factory=dict)  # "s1.b0" -> channels conv1 produced
    convs: int = 0
    quantized_convs: int = 0
    quantized_linears: int = 0
    conv_input_dtypes: set[str] = field(default_factory=set)

    def summary(self) -> dict[str, Any]:
        per_image = self.macs // max(self.images, 1)
        return {"macs_per_image": per_image, "flops_per_image": 2 * per_image, "input_shape": self.input_shape,
                "block_widths": dict(self.block_widths), "blocks": sorted(self.block_widths),
                "convs_ran": self.convs, "quantized_convs_ran": self.quantized_convs,
                "quantized_linears_ran": self.quantized_linears, "conv_input_dtypes": sorted(self.conv_input_dtypes)}


@contextlib.contextmanager
def record_forward(model: nn.Module) -> Iterator[ForwardRecord]:
    """Hooks on every convolution and linear layer for the *first* forward pass in the block (later
    passes run unhooked after it): MACs = output elements x (input channels / groups) x kernel area
    for a convolution, output elements x input features for a linear layer; batch norm, ReLU, the
    residual additions and pooling are not counted. FLOPs are reported as 2 x MACs."""
    rec = ForwardRecord()
    handles = []
    done = [False]

    def on_conv(name: str):
        def hook(m, inputs, out):
            if done[0]:
                return
            x = inputs[0]
            kh, kw = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
            rec.macs += out.numel() * (m.in_channels // m.groups) * kh * kw
            rec.convs += 1
            rec.quantized_convs += int(_quantized(m))
            rec.conv_input_dtypes.add(str(x.dtype))
            match = _BLOCK_CONV1.match(name)
            if match:
                rec.block_widths[f"s{int(match.group(1)) + 1}.{match.group(2)}"] = int(out.shape[1])
        return hook

    def on_linear(m, inputs, out):
        if not done[0]:
            rec.macs += out.numel() * m.in_features
            rec.quantized_linears += int(_quantized(m))

    def on_model(m, inputs):
        if not done[0] and not rec.images:
            rec.images = int(inputs[0].shape[0])
            rec.input_shape = [int(d) for d in inputs[0].shape[1:]]

    def after_model(m, inputs, out):
        done[0] = True

    for name, m in model.named_modules():
        if _is_conv(m):
            handles.append(m.register_forward_hook(on_conv(name)))
        elif _is_linear(m):
            handles.append(m.register_forward_hook(on_linear))
    handles.append(model.register_forward_pre_hook(on_model))
    handles.append(model.register_forward_hook(after_model))
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


def measure(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Parameters and one recorded forward pass (eval mode, no gradients) of ``model`` on ``x``."""
    was_training = model.training
    model.eval()
    with torch.inference_mode(), record_forward(model) as rec:
        model(x)
    model.train(was_training)
    return {"parameters": parameter_count(model), **rec.summary()}
