"""Precision names used by knobs ("fp32", "bf16", "fp16") -> torch dtypes, and autocast by name."""

from __future__ import annotations

import contextlib

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "torch.bfloat16" (the form evidence is recorded in)."""
    return str(dtype)


def autocast(device: str, precision: str):
    """Mixed precision for a forward pass; "fp32" means no autocast at all."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=DTYPES[precision])


def cast_model(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Store every floating parameter in ``precision`` (pure low precision, no master copy)."""
    return model if precision == "fp32" else model.to(DTYPES[precision])
