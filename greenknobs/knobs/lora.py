"""LoRA knobs (model phase): rank, alpha and target modules, attached through greenknobs.peft_adapter.

Rank 0 is the baseline (full fine-tuning). The adapters are attached after every other model
knob (pruning first, then quantisation, then LoRA) by ``pipelines.loop.prepare_model``.
"""

from __future__ import annotations

from typing import Any

from greenknobs.errors import ConfigError
from greenknobs.knobs.base import Knob, Space, register


def _lora(ctx, knob: str) -> dict[str, Any]:
    return ctx.observed.require("lora", knob)


@register
class LoraRank(Knob):
    name = "model.lora_rank"
    phase = "model"
    default = 0
    space = Space(choices=(0, 4, 8, 16))
    value_type = int
    description = "Train low-rank adapters of this rank instead of every weight (0 = full fine-tuning)."
    verifies = "adapters attached and their rank; trainable parameters the optimizer got; adapters' B matrices moved from 0"

    def validate_value(self, value: int, key: str) -> None:
        if value < 0:
            raise ConfigError(key, f"must be >= 0, got {value}")

    def apply(self, ctx, value: int) -> None:
        ctx.settings["lora_rank"] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        ev = _lora(ctx, self.name)
        trainable = ctx.observed.require("trainable_parameters", self.name)
        total = ctx.observed.require("total_parameters", self.name)
        if value == 0:
            self.expect(ev["lora_modules"] == 0, f"{ev['lora_modules']} adapters without LoRA")
        else:
            self.expect(ev["lora_modules"] > 0, "no adapter was attached")
            self.expect(ev["lora_ranks"] == [value], f"adapter ranks {ev['lora_ranks']}")
            self.expect(trainable < total, f"{trainable} of {total} parameters trainable: base not frozen")
            self.expect(ev["lora_B_norm"] > 0, "adapters never trained (B is still zero)")
        return {"lora_modules": ev["lora_modules"], "trainable_parameters": trainable, "total_parameters": total,
                "trainable_share": round(trainable / total, 5)}


@register
class LoraAlpha(Knob):
    name = "model.lora_alpha"
    phase = "model"
    default = 16
    space = Space(choices=(8, 16, 32))
    value_type = int
    description = "LoRA scaling numerator: adapter output is scaled by alpha / rank (needs model.lora_rank > 0)."
    verifies = "scaling read back from every adapter equals alpha / rank"

    def validate_value(self, value: int, key: str) -> None:
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")

    def apply(self, ctx, value: int) -> None:
        ctx.settings["lora_alpha"] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        ev = _lora(ctx, self.name)
        rank = ctx.settings.get("lora_rank", 0)
        if rank:
            want = round(value / rank, 6)
            self.expect(ev["lora_scalings"] == [want], f"adapter scalings {ev['lora_scalings']}, expected {want}")
        return {"lora_scalings": ev["lora_scalings"]}


@register
class LoraTargets(Knob):
    name = "model.lora_targets"
    phase = "model"
    default = "attention"
    space = Space(choices=("attention", "qv", "attention_mlp"))
    value_type = str
    description = ("Which Linear layers of the blocks get adapters: attention (q, k, v, out), qv, attention_mlp, "
                   "or comma-separated name suffixes. Matching no module is an error, never a silent no-op.")
    verifies = "the modules carrying adapters are exactly the ones the target selects (and at least one)"

    def validate_value(self, value: str, key: str) -> None:
        if not value.strip():
            raise ConfigError(key, "must name a preset or module name suffixes")

    def apply(self, ctx, value: str) -> None:
        ctx.settings["lora_targets"] = value

    def verify(self, ctx, value: str) -> dict[str, Any]:
        ev = _lora(ctx, self.name)
        if ctx.settings.get("lora_rank", 0):
            want = sorted(ctx.observed.require("lora_targets_resolved", self.name))
            self.expect(sorted(ev["lora_module_names"]) == want and want,
                        f"adapters on {ev['lora_module_names']}, expected {want}")
        return {"lora_modules": ev["lora_modules"], "targets": sorted({n.rsplit('.', 1)[-1] for n in ev["lora_module_names"]})}
