"""Model-phase knobs that change how the network is stored and computed (not its depth).

Layer pruning lives in ``model.py`` / ``pruning.py``; LoRA in ``lora.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from greenknobs import bnb
from greenknobs.errors import IncompatibleKnobs
from greenknobs.knobs.base import Knob, Space, register

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@register
class WeightDtype(Knob):
    name = "model.weight_dtype"
    phase = "model"
    default = "fp32"
    space = Space(choices=("fp32", "bf16", "fp16"))
    value_type = str
    description = "Store and train the weights in this dtype (pure low precision, unlike autocast). fp16 on GPU only."
    verifies = "dtype of the weights at the first training step and in the trained model"

    def check(self, value: str, runtime) -> None:
        if value == "fp16" and runtime.device != "cuda":
            raise IncompatibleKnobs("model.weight_dtype=fp16 needs a CUDA GPU (fp16 matmuls on CPU are slow and unstable)")

    def apply(self, ctx, value: str) -> None:
        if value != "fp32":
            ctx.model.to(DTYPES[value])

    def verify(self, ctx, value: str) -> dict[str, Any]:
        seen = ctx.observed.require("train_weight_dtype", self.name)
        final = ctx.observed.require("trained_weight_dtype", self.name)  # at the end of training, before inference casts
        want = str(DTYPES[value])
        self.expect(seen == want and final == want, f"weights were {seen} in training, {final} after, expected {want}")
        return {"train_weight_dtype": seen, "trained_weight_dtype": final}


@register
class Attention(Knob):
    name = "model.attention"
    phase = "model"
    default = "sdpa"  # what transformers picks when it loads a model
    space = Space(choices=("sdpa", "eager"))
    value_type = str
    description = "Attention implementation: PyTorch's fused scaled_dot_product_attention (sdpa) or the eager matmul/softmax."
    verifies = "fused-attention calls counted during the first training forward pass (one per block for sdpa, none for eager)"

    def apply(self, ctx, value: str) -> None:
        if ctx.model.config._attn_implementation != value:
            ctx.model.set_attn_implementation(value)

    def verify(self, ctx, value: str) -> dict[str, Any]:
        calls = ctx.observed.require("sdpa_calls_first_forward", self.name)
        blocks = ctx.observed.require("blocks_first_forward", self.name)
        if value == "sdpa":
            self.expect(calls >= blocks, f"{calls} fused-attention calls for {blocks} blocks")
        else:
            self.expect(calls == 0, f"{calls} fused-attention calls with eager attention")
        return {"sdpa_calls_first_forward": calls, "blocks": blocks}


@register
class QuantizedLoad(Knob):
    name = "model.quantized_load"
    phase = "model"
    default = "none"
    space = Space(choices=("none", "int8", "nf4"))
    value_type = str
    devices = ("cuda",)
    description = ("Quantise the frozen block weights with bitsandbytes (8-bit, or 4-bit NF4 as in QLoRA; "
                   "needs model.lora_rank > 0 to train adapters on top). CUDA only.")
    verifies = "bitsandbytes Linear4bit / Linear8bitLt modules counted in the trained model"

    def check(self, value: str, runtime) -> None:
        if value != "none":
            reason = bnb.available(runtime.device)
            if reason:
                raise IncompatibleKnobs(f"model.quantized_load={value}: {reason}")

    def apply(self, ctx, value: str) -> None:
        ctx.settings["quantized_load"] = value  # done after every model knob, before LoRA (pipelines.loop.prepare_model)

    def verify(self, ctx, value: str) -> dict[str, Any]:
        counts = bnb.count_quantized(ctx.trained_model) if value != "none" else {"Linear4bit": 0, "Linear8bitLt": 0}
        done = ctx.observed.get("quantized_linears", 0)
        if value == "none":
            self.expect(done == 0, f"{done} layers quantised")
        else:
            kind = "Linear4bit" if value == "nf4" else "Linear8bitLt"
            self.expect(counts[kind] > 0 and counts[kind] == done, f"{counts[kind]} {kind} modules, {done} converted")
        return {"quantized_linears": done, **counts}
