"""Inference-phase knobs: how the trained model is served for evaluation."""

from __future__ import annotations

from typing import Any

from greenknobs.errors import ConfigError
from greenknobs.knobs.base import Knob, SettingKnob, Space, register
from greenknobs.knobs.system import CompileSetting
from greenknobs.knobs.training import FP16_NEEDS_CUDA
from greenknobs.ml.precision import DTYPES, cast_model
from greenknobs.ml.quantize import count_linears, quantize_dynamic_int8


@register
class InferenceBatchSize(SettingKnob):
    name = "inference.batch_size"
    default = 32
    space = Space(choices=(8, 16, 32, 64, 128))
    bounds = (1, None)
    example = 8
    description = "Examples per inference forward pass."
    verifies = "largest inference batch the loop built"
    evidence = ("inference_batch_size_max", "inference_largest_split")

    def judge(self, value, seen, ctx):
        largest = seen["inference_batch_size_max"]
        return None if largest == min(value, seen["inference_largest_split"]) else f"largest batch was {largest}"


@register
class Quantization(Knob):
    name = "inference.quantization"
    default = "none"
    space = Space(choices=("none", "dynamic_int8"))
    devices = ("cpu",)  # PyTorch's dynamic int8 kernels (fbgemm/qnnpack) are CPU-only
    example = "dynamic_int8"
    description = "Dynamic int8 quantisation of every nn.Linear for inference (torch.ao)."
    verifies = "number of quantised Linear modules in the model that served inference"

    def apply(self, ctx, value: str) -> None:
        ctx.observed.record("inference_linears_before_quantization", count_linears(ctx.model))
        if value == "dynamic_int8":
            ctx.model = quantize_dynamic_int8(ctx.model)
        ctx.settings[self.name] = value

    def verify(self, ctx, value: str) -> dict[str, Any]:
        quantized = ctx.observed.require("inference_quantized_linears", self.name)  # counted in the model that served
        linears = ctx.observed.require("inference_linears_before_quantization", self.name)
        if value == "none":
            self.expect(quantized == 0, f"{quantized} quantised Linear modules without quantisation")
        else:
            self.expect(quantized == linears and quantized > 0, f"{quantized} of {linears} Linear modules quantised")
        return {"quantized_linears": quantized, "linear_modules": linears}


@register
class InferencePrecision(Knob):
    name = "inference.precision"
    default = "fp32"
    space = Space(choices=tuple(DTYPES))
    value_devices = FP16_NEEDS_CUDA
    example = "bf16"
    description = "Cast the trained model to this dtype for inference (bf16 on CPU or GPU; fp16 on GPU only)."
    verifies = "dtype of the logits the inference loop produced"

    def apply(self, ctx, value: str) -> None:
        ctx.model = cast_model(ctx.model, value)
        if ctx.exit_head is not None:
            cast_model(ctx.exit_head, value)
        ctx.settings[self.name] = value

    def verify(self, ctx, value: str) -> dict[str, Any]:
        seen = ctx.observed.require("inference_logits_dtype", self.name)
        want = str(DTYPES[value])
        # a bf16-stored model (model.weight_dtype) already infers in bf16; fp32 then means "not cast further"
        stored = ctx.observed.get("train_weight_dtype", "torch.float32")
        self.expect(seen == want or (value == "fp32" and seen == stored), f"inference logits were {seen}")
        return {"inference_logits_dtype": seen}


@register
class InferenceCompile(CompileSetting):
    name = "inference.compile"
    description = "torch.compile the trained model for inference (Inductor, dynamic shapes); compile time counts as inference energy."
    verifies = "graphs compiled and calls into compiled code during inference (a counting compiler backend)"
    evidence = ("inference_compile",)


@register
class InferenceSeqLen(SettingKnob):
    name = "inference.seq_len"
    default = 0
    space = Space(choices=(0, 32, 64, 128, 256))
    bounds = (0, None)
    example = 8
    description = ("Tokens per inference input: classifiers cut each test input to this length; language models "
                   "evaluate perplexity in blocks of this length (0 = as trained / the pipeline's evaluation length).")
    verifies = "longest inference input (classification) or evaluation block length (language model)"
    evidence = ("inference_longest_input",)

    def validate_value(self, value: int, key: str) -> None:
        if value != 0 and value < 8:
            raise ConfigError(key, f"must be 0 (as trained) or at least 8 tokens, got {value}")

    def _limit(self, value, ctx) -> int:
        # 0: the pipeline's own evaluation length (a LM's fixed block) or, for classifiers, data.max_seq_len
        return value or ctx.observed.get("inference_default_len") or ctx.setting("data.max_seq_len")

    def judge(self, value, seen, ctx):
        longest, limit = seen["inference_longest_input"], self._limit(value, ctx)
        if longest > limit:
            return f"an inference input of {longest} tokens, limit {limit}"
        block = ctx.observed.get("inference_block_len")
        return f"perplexity evaluated in blocks of {block}" if block is not None and block != limit else None

    def report(self, value, seen, ctx):
        out = {**seen, "inference_limit": self._limit(value, ctx)}
        if ctx.observed.get("inference_block_len") is not None:  # language model: blocks are exactly this long
            out["inference_block_len"] = ctx.observed.get("inference_block_len")
        return out


@register
class EarlyExit(SettingKnob):
    name = "inference.early_exit"
    default = "off"
    space = Space(choices=("off", 0.99, 0.95, 0.9, 0.8))
    value_type = (str, float)
    example = 0.95
    example_with = {"training.exit_head_depth": 0.5}
    description = ("Confidence-based early exit: answer from the exit head (training.exit_head_depth) when its top "
                   "probability >= this threshold; the later blocks then do not run. Needs the exit head.")
    verifies = ("rows answered at the exit vs by the full model (exit rate); every exited row's exit-head confidence "
                "is at or above the threshold and every other row's below it")
    evidence = ("early_exit",)

    def validate_value(self, value, key: str) -> None:
        if isinstance(value, str):
            if value != "off":
                raise ConfigError(key, f"expected 'off' or a probability threshold, got {value!r}")
        elif not 0.0 < value < 1.0:
            raise ConfigError(key, f"threshold must be in (0, 1), got {value}")

    def judge(self, value, seen, ctx):
        ev = seen["early_exit"]
        if value == "off":
            return "the truncated model ran with early exit off" if ev["truncated_passes"] else None
        if not (ev["truncated_passes"] > 0 and ev["exited"] + ev["full"] == ev["rows"]):
            return f"exit accounting does not add up: {ev}"
        low, high = ev["min_confidence_exited"], ev["max_confidence_full"]
        if low is not None and low < value:
            return f"a row exited at confidence {low:.4f}, below the threshold {value}"
        if high is not None and high >= value:
            return f"a row at confidence {high:.4f} ran the full model although the threshold is {value}"
        return None

    def report(self, value, seen, ctx):
        return seen["early_exit"]
