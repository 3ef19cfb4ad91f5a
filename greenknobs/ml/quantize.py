"""PyTorch's dynamic int8 quantisation of nn.Linear for CPU inference (torch.ao, fbgemm/qnnpack)."""

from __future__ import annotations

import warnings

import torch
from torch import nn


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose nn.Linear layers run int8 kernels; a bf16-stored model is upcast first."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model.float(), {nn.Linear}, dtype=torch.qint8)


def quantize_dynamic_int8_(model: nn.Module) -> nn.Module:
    """``model`` itself with its nn.Linear layers swapped for int8 ones (in place: a Trainer, or any
    code holding the model, then serves the quantised one); a bf16-stored model is upcast first."""
    from torch.ao.quantization import quantize_dynamic

    if "forward" in model.__dict__ and hasattr(model, "_original_forward"):
        # accelerate's mixed precision left an autocast around the forward (a Trainer trained in
        # bf16): int8 kernels take fp32 activations, so serving runs the model's own forward
        model.forward = model._original_forward
        del model._original_forward
    with warnings.catch_warnings():  # torch.ao's own deprecation notice, once per quantised layer
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        return quantize_dynamic(model.float(), {nn.Linear}, dtype=torch.qint8, inplace=True)


def count_quantized_linears(model: nn.Module) -> int:
    """Linear layers that run int8 kernels. Only the quantised Linear modules count, not the
    packed-parameter holders each of them contains (counting every torch.ao module doubles it)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(1 for m in model.modules() if isinstance(m, DynamicQuantizedLinear))


def count_linears(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, nn.Linear))
