"""bitsandbytes (GPU only): the only module that imports it, always lazily.

4-bit NF4 / 8-bit weight quantisation of the Linear layers inside the transformer blocks (as
in QLoRA: the frozen base is quantised, LoRA adapters train on top) and the 8-bit AdamW
optimizer. Everything here needs CUDA; ``available()`` says why not otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

from greenknobs.ml import layers


def available(device: str) -> str | None:
    """None when usable here, else the reason it is not."""
    if device != "cuda":
        return "bitsandbytes kernels need a CUDA GPU; this run is on " + device
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "the package bitsandbytes is not installed (pip install bitsandbytes)"
    return None


def quantize_blocks(model: nn.Module, mode: str, device: str = "cuda") -> int:
    """Replace every nn.Linear in the block stack with a bitsandbytes one ("nf4" or "int8"); return the count."""
    import bitsandbytes as bnb

    _, _, stack = layers.find_layer_stack(model)
    count = 0
    for block in stack:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is not nn.Linear:
                    continue
                w = child.weight.data.to(device="cpu", dtype=child.weight.dtype)
                if mode == "nf4":
                    q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=torch.bfloat16, quant_type="nf4")  # QLoRA's setting
                    q.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4")
                else:
                    q = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                            has_fp16_weights=False, threshold=6.0)
                    q.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
                if child.bias is not None:
                    q.bias = nn.Parameter(child.bias.data.clone(), requires_grad=False)
                setattr(parent, name, q.to(device))  # moving to the GPU is what quantises the weights
                count += 1
    return count


def count_quantized(model: nn.Module) -> dict[str, int]:
    kinds = {"Linear4bit": 0, "Linear8bitLt": 0}
    for m in model.modules():
        for cls in type(m).__mro__:
            if cls.__name__ in kinds and cls.__module__.startswith("bitsandbytes"):
                kinds[cls.__name__] += 1
                break
    return kinds


def adamw_8bit(params, lr: float):
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, lr=lr)
