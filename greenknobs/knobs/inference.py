"""Inference-phase knobs: how the trained model is served for evaluation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from greenknobs.compile import verify_compiled
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

            # int8 kernels quantise fp32 weights: a bf16-stored model (model.weight_dtype) is upcast first
            ctx.model = quantize_dynamic(ctx.model.float(), {nn.Linear}, dtype=torch.qint8)

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


INFERENCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@register
class InferencePrecision(Knob):
    name = "inference.precision"
    phase = "inference"
    default = "fp32"
    space = Space(choices=("fp32", "bf16", "fp16"))
    value_type = str
    description = "Cast the trained model to this dtype for inference (bf16 on CPU or GPU; fp16 on GPU only)."
    verifies = "dtype of the logits the inference loop produced"

    def check(self, value: str, runtime) -> None:
        from greenknobs.errors import IncompatibleKnobs

        if value == "fp16" and runtime.device != "cuda":
            raise IncompatibleKnobs("inference.precision=fp16 needs a CUDA GPU")

    def apply(self, ctx, value: str) -> None:
        if value != "fp32":
            ctx.model = ctx.model.to(INFERENCE_DTYPES[value])
            if getattr(ctx, "exit_head", None) is not None:
                ctx.exit_head.to(INFERENCE_DTYPES[value])

    def verify(self, ctx, value: str) -> dict[str, Any]:
        seen = ctx.observed.require("inference_logits_dtype", self.name)
        want = str(INFERENCE_DTYPES[value])
        # a bf16-stored model (model.weight_dtype) already infers in bf16; fp32 then means "not cast further"
        stored = ctx.observed.get("train_weight_dtype", "torch.float32")
        self.expect(seen == want or (value == "fp32" and seen == stored), f"inference logits were {seen}")
        return {"inference_logits_dtype": seen}


@register
class InferenceCompile(Knob):
    name = "inference.compile"
    phase = "inference"
    default = "off"
    space = Space(choices=("off", "inductor"))
    value_type = str
    description = "torch.compile the trained model for inference (Inductor, dynamic shapes); compile time counts as inference energy."
    verifies = "graphs compiled and calls into compiled code during inference (a counting compiler backend)"

    def apply(self, ctx, value: str) -> None:
        ctx.settings["inference_compile"] = value

    def verify(self, ctx, value: str) -> dict[str, Any]:
        stats = ctx.observed.require("inference_compile", self.name)
        return verify_compiled(self, stats, value)


@register
class InferenceSeqLen(Knob):
    name = "inference.seq_len"
    phase = "inference"
    default = 0
    space = Space(choices=(0, 32, 64, 128, 256))
    value_type = int
    description = ("Tokens per inference input: classifiers cut each test input to this length; language models "
                   "evaluate perplexity in blocks of this length (0 = as trained / the pipeline's evaluation length).")
    verifies = "longest inference input (classification) or evaluation block length (language model)"

    def validate_value(self, value: int, key: str) -> None:
        if value != 0 and value < 8:
            raise ConfigError(key, f"must be 0 (as trained) or at least 8 tokens, got {value}")

    def apply(self, ctx, value: int) -> None:
        ctx.settings["inference_seq_len"] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        longest = ctx.observed.require("inference_longest_input", self.name)
        # 0: the pipeline's own evaluation length (a LM's fixed block) or, for classifiers, data.max_seq_len
        limit = value or ctx.observed.get("inference_default_len") or ctx.setting("max_seq_len")
        self.expect(longest <= limit, f"an inference input of {longest} tokens, limit {limit}")
        ev = {"inference_longest_input": longest, "inference_limit": limit}
        block = ctx.observed.get("inference_block_len")
        if block is not None:  # language model: blocks are exactly this long
            self.expect(block == limit, f"perplexity evaluated in blocks of {block}")
            ev["inference_block_len"] = block
        return ev


@register
class EarlyExit(Knob):
    name = "inference.early_exit"
    phase = "inference"
    default = "off"
    space = Space(choices=("off", 0.99, 0.95, 0.9, 0.8))
    value_type = (str, float)
    description = ("Confidence-based early exit: answer from the exit head (training.exit_head_depth) when its top "
                   "probability >= this threshold; the later blocks then do not run. Needs the exit head.")
    verifies = "rows answered at the exit vs by the full model (exit rate), and the block the exit sits after"

    def validate_value(self, value, key: str) -> None:
        if isinstance(value, str):
            if value != "off":
                raise ConfigError(key, f"expected 'off' or a probability threshold, got {value!r}")
        elif not 0.0 < value < 1.0:
            raise ConfigError(key, f"threshold must be in (0, 1), got {value}")

    def apply(self, ctx, value) -> None:
        ctx.settings["early_exit"] = value

    def verify(self, ctx, value) -> dict[str, Any]:
        ev = ctx.observed.require("early_exit", self.name)
        if value == "off":
            self.expect(ev["truncated_passes"] == 0, "the truncated model ran with early exit off")
        else:
            self.expect(ev["truncated_passes"] > 0 and ev["exited"] + ev["full"] == ev["rows"],
                        f"exit accounting does not add up: {ev}")
        return ev
