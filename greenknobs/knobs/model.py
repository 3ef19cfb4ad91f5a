"""Model-phase knobs that change the network before it is fine-tuned: depth, storage dtype,
attention implementation, quantised loading. Pruning's own settings: pruning.py; LoRA: lora.py."""

from __future__ import annotations

from typing import Any

from greenknobs.errors import IncompatibleKnobs, KnobError
from greenknobs.knobs.base import Knob, SettingKnob, Space, register
from greenknobs.knobs.training import FP16_NEEDS_CUDA
from greenknobs.ml import bnb, layers
from greenknobs.ml.precision import DTYPES, cast_model
from greenknobs.ml.pruning.trial import prune_in_trial


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@register
class LayersRemoved(Knob):
    name = "model.layers_removed"
    default = 0
    space = Space(low=0, high=5, integer=True)
    bounds = (0, None)
    example = 1
    description = ("Remove N transformer blocks before fine-tuning, chosen by model.pruning_method (default top-N, "
                   "Why Lift so Heavy?), optionally iterative, compensated and healed (docs/pruning.md).")
    verifies = "block count and config layer count after pruning; parameter count; the pruning report"
    # After the pruning settings (-10), before dtype / quantisation / LoRA knobs (0): layers are
    # scored and removed on the model as loaded.
    order = -5

    def apply(self, ctx, value: int) -> None:
        from greenknobs.knobs.pruning import prune_options

        ctx.settings[self.name] = value
        before = layers.layer_count(ctx.model)
        ctx.observed.record("layers_before", before)
        ctx.observed.record("params_before", parameter_count(ctx.model))
        if value >= before:
            raise KnobError(f"{self.name}={value} would remove all {before} layers")
        if not value:
            ctx.observed.record("layers_removed_indices", [])
            return
        report = prune_in_trial(ctx, value, prune_options(ctx))
        ctx.observed.record("pruning_report", report)
        ctx.observed.record("layers_removed_indices", report["removed"])
        ctx.detail("pruning", {k: report[k] for k in ("method", "iterative", "compensation", "removed", "merged",
                                                      "alphas", "calibration_samples", "selection_energy")})

    def verify(self, ctx, value: int) -> dict[str, Any]:
        before = ctx.observed.require("layers_before", self.name)
        # The model that was trained and evaluated, not a copy: count its blocks now.
        after = layers.layer_count(ctx.trained_model)
        self.expect(after == before - value, f"{after} layers remain, expected {before - value}")
        self.expect(layers.config_layer_count(ctx.trained_model) in (None, after), "config layer count disagrees")
        return {
            "layers_before": before,
            "layers_after": after,
            "removed_indices": ctx.observed.get("layers_removed_indices"),
            "params_before": ctx.observed.get("params_before"),
            "params_after": parameter_count(ctx.trained_model),
            "pruning": ctx.observed.get("pruning_report"),
        }


@register
class WeightDtype(Knob):
    name = "model.weight_dtype"
    default = "fp32"
    space = Space(choices=tuple(DTYPES))
    value_devices = FP16_NEEDS_CUDA
    example = "bf16"
    description = "Store and train the weights in this dtype (pure low precision, unlike autocast). fp16 on GPU only."
    verifies = "dtype of the weights at the first training step and in the trained model"

    def apply(self, ctx, value: str) -> None:
        cast_model(ctx.model, value)
        ctx.settings[self.name] = value

    def verify(self, ctx, value: str) -> dict[str, Any]:
        seen = ctx.observed.require("train_weight_dtype", self.name)
        final = ctx.observed.require("trained_weight_dtype", self.name)  # at the end of training, before inference casts
        want = str(DTYPES[value])
        self.expect(seen == want and final == want, f"weights were {seen} in training, {final} after, expected {want}")
        return {"train_weight_dtype": seen, "trained_weight_dtype": final}


@register
class Attention(Knob):
    name = "model.attention"
    default = "sdpa"  # what transformers picks when it loads a model
    space = Space(choices=("sdpa", "eager"))
    example = "eager"
    description = "Attention implementation: PyTorch's fused scaled_dot_product_attention (sdpa) or the eager matmul/softmax."
    verifies = "fused-attention calls counted during the first training forward pass (one per block for sdpa, none for eager)"

    def apply(self, ctx, value: str) -> None:
        if ctx.model.config._attn_implementation != value:
            ctx.model.set_attn_implementation(value)
        ctx.settings[self.name] = value

    def verify(self, ctx, value: str) -> dict[str, Any]:
        calls = ctx.observed.require("sdpa_calls_first_forward", self.name)
        blocks = ctx.observed.require("blocks_first_forward", self.name)
        if value == "sdpa":
            self.expect(calls >= blocks, f"{calls} fused-attention calls for {blocks} blocks")
        else:
            self.expect(calls == 0, f"{calls} fused-attention calls with eager attention")
        return {"sdpa_calls_first_forward": calls, "blocks": blocks}


@register
class QuantizedLoad(SettingKnob):
    name = "model.quantized_load"
    default = "none"
    space = Space(choices=("none", "int8", "nf4"))
    devices = ("cuda",)
    example = "nf4"
    example_with = {"model.lora_rank": 4}
    description = ("Quantise the frozen block weights with bitsandbytes (8-bit, or 4-bit NF4 as in QLoRA; "
                   "needs model.lora_rank > 0 to train adapters on top). CUDA only.")
    verifies = "bitsandbytes Linear4bit / Linear8bitLt modules counted in the trained model"
    evidence = ("quantized_linears",)  # done after every model knob, before LoRA (ml.train_loop.prepare_model)

    def check(self, value: str, runtime) -> None:
        if value != "none":
            reason = bnb.available(runtime.device)
            if reason:
                raise IncompatibleKnobs(f"model.quantized_load={value}: {reason}")

    def judge(self, value, seen, ctx):
        done = seen["quantized_linears"]
        if value == "none":
            return f"{done} layers quantised" if done else None
        kind = "Linear4bit" if value == "nf4" else "Linear8bitLt"
        count = bnb.count_quantized(ctx.trained_model)[kind]
        return None if count > 0 and count == done else f"{count} {kind} modules, {done} converted"

    def report(self, value, seen, ctx):
        counts = bnb.count_quantized(ctx.trained_model) if value != "none" else {"Linear4bit": 0, "Linear8bitLt": 0}
        return {**seen, **counts}
