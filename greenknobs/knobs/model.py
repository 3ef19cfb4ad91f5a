"""Model-phase knobs that change the network before it is fine-tuned: depth, storage dtype,
attention implementation, quantised loading. Pruning's own settings: pruning.py; LoRA: lora.py."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from greenknobs.errors import IncompatibleKnobs, KnobError
from greenknobs.knobs import watching
from greenknobs.knobs.base import Conflict, ObjectKnob, Space, register
from greenknobs.knobs.training import FP16_NEEDS_CUDA
from greenknobs.ml import bnb, instruments, layers
from greenknobs.ml.precision import DTYPES, cast_model
from greenknobs.ml.pruning.trial import prune_in_trial


@dataclass
class BlocksEvidence:
    blocks_before: int | None = None  # the block stack as handed over, before any knob acted
    params_before: int | None = None
    removed: list[int] | None = None
    pruning: dict[str, Any] | None = None
    params_after: int | None = None
    blocks_ran: dict[str, int] = field(default_factory=dict)  # phase -> blocks whose forward ran in its first forward


@register
class LayersRemoved(ObjectKnob):
    name = "model.layers_removed"
    default = 0
    space = Space(low=0, high=5, integer=True)
    bounds = (0, None)
    example = 1
    description = ("Remove N transformer blocks before fine-tuning, chosen by model.pruning_method (default top-N, "
                   "Why Lift so Heavy?), optionally iterative, compensated and healed (docs/pruning.md). Acts on any "
                   "model with a discoverable block stack (a ModuleList of identical blocks).")
    verifies = ("blocks whose forward ran in the first training and the first serving forward pass (forward hooks), "
                "against the stack as handed over; parameter count; the pruning report")
    acts_on = ("model",)
    needs = (("model",),)
    needs_hint = "the model: trial.model(model)"
    evidence_type = BlocksEvidence
    # After the pruning settings (-10), before dtype / quantisation / LoRA knobs (0): layers are
    # scored and removed on the model as loaded.
    order = -5

    def handed(self, kind, model, value, trial):
        from greenknobs.knobs.pruning import prune_options

        ev = trial.evidence(self)
        if ev.blocks_before is None:
            if not instruments.has_block_stack(model):
                raise KnobError(f"{self.name} needs a model with a stack of repeated blocks; {type(model).__name__} has none")
            ev.blocks_before = layers.layer_count(model)
            ev.params_before = instruments.parameter_count(model)
            if value >= ev.blocks_before:
                raise KnobError(f"{self.name}={value} would remove all {ev.blocks_before} layers")
        if trial.may_act(self, kind, model) and value:
            report = prune_in_trial(model, value, prune_options(trial), rows=trial.ctx.extras.get("calibration"),
                                    pad_id=trial.ctx.pad_id, seed=trial.seed, meter=trial.meter)
            ev.pruning, ev.removed = report, report["removed"]
            trial.detail("pruning", {k: report[k] for k in ("method", "iterative", "compensation", "removed", "merged",
                                                            "alphas", "calibration_samples", "selection_energy")})
        if ev.removed is None:
            ev.removed = []
        ev.params_after = instruments.parameter_count(model)
        if watching.once(trial, self):
            def start(phase, module, args, kwargs):
                stack = instruments.blocks(module)
                return stack, instruments.count_calls(stack)

            def finish(phase, state, module, output):
                stack, (counts, handles) = state
                for h in handles:
                    h.remove()
                ev.blocks_ran.setdefault(phase, sum(1 for c in counts if c))

            watching.on_first_forward(trial, ("training", *watching.SERVING), start, finish)
        return model

    def judge(self, value, ev, ctx):
        want = ev.blocks_before - value
        if not ev.blocks_ran:
            return "no forward pass of the model was watched"
        trained = ev.blocks_ran.get("training")
        if trained is not None and trained != want:
            return f"{trained} blocks ran in a training step, expected {want} of {ev.blocks_before}"
        served = [n for p, n in ev.blocks_ran.items() if p != "training"]
        if any(n > want for n in served):  # early exit may run fewer, never more
            return f"{max(served)} blocks ran to serve a prediction, expected at most {want}"
        return None

    def report(self, value, ev, ctx):
        return {"layers_before": ev.blocks_before, "blocks_ran": ev.blocks_ran, "removed_indices": ev.removed,
                "params_before": ev.params_before, "params_after": ev.params_after, "pruning": ev.pruning}


@dataclass
class DtypeEvidence:
    in_training: str | None = None  # storage dtype of every floating weight, read as the first training step runs
    after_training: str | None = None


@register
class WeightDtype(ObjectKnob):
    name = "model.weight_dtype"
    conflicts = (Conflict("training.precision", lambda d: d != "fp32", lambda p: p == "fp16",
                          "fp16 loss scaling needs fp32 master weights"),
                 Conflict("training.optimizer", lambda d: d != "fp32", lambda o: o == "adamw_8bit",
                          "8-bit AdamW keeps fp32 master weights; use fp32 weights"))
    default = "fp32"
    space = Space(choices=tuple(DTYPES))
    value_devices = FP16_NEEDS_CUDA
    example = "bf16"
    description = "Store and train the weights in this dtype (pure low precision, unlike autocast). fp16 on GPU only."
    verifies = "dtype of every floating weight as the first training step runs, and after training"
    acts_on = ("model",)
    needs = (("model",),)
    needs_hint = "the model: trial.model(model)"
    evidence_type = DtypeEvidence

    def handed(self, kind, model, value, trial):
        ev = trial.evidence(self)
        if trial.may_act(self, kind, model):
            cast_model(model, value)
        if watching.once(trial, self):
            watching.on_first_forward(trial, ("training",), lambda p, m, a, k: setattr(ev, "in_training", instruments.floating_dtype(m)),
                                      lambda *_: None)
        return model

    def phase_ended(self, phase, value, trial):
        if phase == "training" and trial.handed("model") is not None:
            trial.evidence(self).after_training = instruments.floating_dtype(trial.handed("model"))

    def judge(self, value, ev, ctx):
        want = str(DTYPES[value])
        if ev.in_training is None:
            return "no training step was watched"
        if ev.in_training != want or (ev.after_training not in (None, want)):
            return f"weights were {ev.in_training} in training, {ev.after_training} after, expected {want}"
        return None


@dataclass
class AttentionEvidence:
    sdpa_calls: int | None = None  # fused-attention calls in the first training forward
    blocks: int | None = None


@register
class Attention(ObjectKnob):
    name = "model.attention"
    default = "sdpa"  # what transformers picks when it loads a model
    space = Space(choices=("sdpa", "eager"))
    example = "eager"
    description = ("Attention implementation of a Hugging Face model: PyTorch's fused scaled_dot_product_attention "
                   "(sdpa) or the eager matmul/softmax.")
    verifies = "fused-attention calls counted during the first training forward pass (one per block for sdpa, none for eager)"
    acts_on = ("model",)
    needs = (("model",),)
    needs_hint = "the model: trial.model(model)"
    evidence_type = AttentionEvidence

    def handed(self, kind, model, value, trial):
        ev = trial.evidence(self)
        config = getattr(model, "config", None)
        if not hasattr(config, "_attn_implementation"):
            raise KnobError(f"{self.name} acts on Hugging Face models (set_attn_implementation); "
                            f"{type(model).__name__} is not one")
        if trial.may_act(self, kind, model) and config._attn_implementation != value:
            model.set_attn_implementation(value)
        if watching.once(trial, self):
            def start(phase, module, args, kwargs):
                stack = contextlib.ExitStack()
                return stack, stack.enter_context(instruments.counting_sdpa()), len(instruments.blocks(module))

            def finish(phase, state, module, output):
                stack, counter, blocks = state
                stack.close()
                ev.sdpa_calls, ev.blocks = counter[0], blocks

            watching.on_first_forward(trial, ("training",), start, finish)
        return model

    def judge(self, value, ev, ctx):
        if ev.sdpa_calls is None:
            return "no training step was watched"
        if value == "sdpa":
            return None if ev.sdpa_calls >= ev.blocks else f"{ev.sdpa_calls} fused-attention calls for {ev.blocks} blocks"
        return None if ev.sdpa_calls == 0 else f"{ev.sdpa_calls} fused-attention calls with eager attention"


@dataclass
class QuantizedLoadEvidence:
    converted: int | None = None  # block Linears bitsandbytes replaced
    in_trained_model: dict[str, int] = field(default_factory=dict)  # bitsandbytes modules counted after training


@register
class QuantizedLoad(ObjectKnob):
    name = "model.quantized_load"
    conflicts = (Conflict("model.lora_rank", lambda q: q != "none", lambda r: r == 0,
                          "quantised weights cannot be trained: QLoRA trains adapters on top (model.lora_rank > 0)"),)
    default = "none"
    space = Space(choices=("none", "int8", "nf4"))
    devices = ("cuda",)
    example = "nf4"
    example_with = {"model.lora_rank": 4}
    description = ("Quantise the frozen block weights with bitsandbytes (8-bit, or 4-bit NF4 as in QLoRA; "
                   "needs model.lora_rank > 0 to train adapters on top). CUDA only.")
    verifies = "bitsandbytes Linear4bit / Linear8bitLt modules counted in the trained model"
    acts_on = ("model",)
    needs = (("model",),)
    needs_hint = "the model: trial.model(model)"
    evidence_type = QuantizedLoadEvidence
    order = 5  # after pruning and casting, before LoRA (QLoRA's adapters sit on the quantised layers)

    def check(self, value: str, runtime) -> None:
        if value != "none":
            reason = bnb.available(runtime.device)
            if reason:
                raise IncompatibleKnobs(f"model.quantized_load={value}: {reason}")

    def handed(self, kind, model, value, trial):
        ev = trial.evidence(self)
        if trial.may_act(self, kind, model):
            ev.converted = bnb.quantize_blocks(model, value, trial.runtime.device) if value != "none" else 0
        return model

    def phase_ended(self, phase, value, trial):
        if phase == "training" and trial.handed("model") is not None and self.default != value:
            trial.evidence(self).in_trained_model = bnb.count_quantized(trial.handed("model"))

    def judge(self, value, ev, ctx):
        if value == "none":
            return f"{ev.converted} layers quantised" if ev.converted else None
        kind = "Linear4bit" if value == "nf4" else "Linear8bitLt"
        count = ev.in_trained_model.get(kind, 0)
        return None if count > 0 and count == ev.converted else f"{count} {kind} modules, {ev.converted} converted"
