"""Inference-phase knobs: how the trained model is served for evaluation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from greenknobs.errors import ConfigError
from greenknobs.knobs.base import Knob, Space, register


def count_quantized_linears(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if type(m).__module__.startswith("torch.ao.nn.quantized"))


@register
class InferenceBatchSize(Knob):
    name = "inference.batch_size"
    phase = "inference"
    default = 32
    space = Space(choices=(8, 16, 32, 64, 128))
    value_type = int
    description = "Examples per inference forward pass."
    verifies = "largest inference batch the loop built"

    def validate_value(self, value: int, key: str) -> None:
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")

    def apply(self, ctx, value: int) -> None:
        ctx.settings["inference_batch_size"] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        seen = ctx.observed.require("inference_batch_size_max", self.name)
        n = ctx.samples.get("inference", value)
        self.expect(seen == min(value, n), f"largest batch was {seen}")
        return {"inference_batch_size_max": seen}


@register
class Quantization(Knob):
    name = "inference.quantization"
    phase = "inference"
    default = "none"
    space = Space(choices=("none", "dynamic_int8"))
    value_type = str
    devices = ("cpu",)  # PyTorch's dynamic int8 kernels (fbgemm/qnnpack) are CPU-only
    description = "Dynamic int8 quantisation of every nn.Linear for inference (torch.ao)."
    verifies = "number of quantised Linear modules in the model that served inference"

    def apply(self, ctx, value: str) -> None:
        if value == "dynamic_int8":
            from torch.ao.quantization import quantize_dynamic

            ctx.model = quantize_dynamic(ctx.model, {nn.Linear}, dtype=torch.qint8)

    def verify(self, ctx, value: str) -> dict[str, Any]:
        quantized = ctx.observed.require("inference_quantized_linears", self.name)
        if value == "none":
            self.expect(quantized == 0, f"{quantized} quantised modules without quantisation")
        else:
            self.expect(quantized > 0, "no Linear module was quantised")
        return {"quantized_linears": quantized}

    def validate_value(self, value: str, key: str) -> None:
        if value not in self.space.choices:
            raise ConfigError(key, f"{value!r} is not one of {list(self.space.choices)}")
