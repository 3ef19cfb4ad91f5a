"""LoRA knobs (model phase): rank, alpha and target modules, attached through greenknobs.ml.lora.

Rank 0 is the baseline (full fine-tuning). The adapters are attached after every other model
knob (pruning first, then quantisation, then LoRA) by ``ml.train_loop.prepare_model``.
"""

from __future__ import annotations

from greenknobs.errors import ConfigError
from greenknobs.knobs.base import SettingKnob, Space, register
from greenknobs.ml.lora import select_targets


@register
class LoraRank(SettingKnob):
    name = "model.lora_rank"
    default = 0
    space = Space(choices=(0, 4, 8, 16))
    bounds = (0, None)
    example = 4
    description = "Train low-rank adapters of this rank instead of every weight (0 = full fine-tuning)."
    verifies = "adapters attached and their rank; trainable parameters the optimizer got; adapters' B matrices moved from 0"
    evidence = ("lora", "trainable_parameters", "total_parameters")

    def judge(self, value, seen, ctx):
        ev, trainable, total = seen["lora"], seen["trainable_parameters"], seen["total_parameters"]
        if value == 0:
            return f"{ev['lora_modules']} adapters without LoRA" if ev["lora_modules"] else None
        if not ev["lora_modules"]:
            return "no adapter was attached"
        if ev["lora_ranks"] != [value]:
            return f"adapter ranks {ev['lora_ranks']}"
        if trainable >= total:
            return f"{trainable} of {total} parameters trainable: base not frozen"
        return "adapters never trained (B is still zero)" if ev["lora_B_norm"] <= 0 else None

    def report(self, value, seen, ctx):
        trainable, total = seen["trainable_parameters"], seen["total_parameters"]
        return {"lora_modules": seen["lora"]["lora_modules"], "trainable_parameters": trainable,
                "total_parameters": total, "trainable_share": round(trainable / total, 5)}


@register
class LoraAlpha(SettingKnob):
    name = "model.lora_alpha"
    default = 16
    space = Space(choices=(8, 16, 32))
    bounds = (1, None)
    example = 32
    example_with = {"model.lora_rank": 4}
    description = "LoRA scaling numerator: adapter output is scaled by alpha / rank (needs model.lora_rank > 0)."
    verifies = "scaling read back from every adapter equals alpha / rank"
    evidence = ("lora",)

    def judge(self, value, seen, ctx):
        rank = ctx.settings.get("model.lora_rank", 0)
        want = round(value / rank, 6) if rank else None
        got = seen["lora"]["lora_scalings"]
        return f"adapter scalings {got}, expected {want}" if rank and got != [want] else None

    def report(self, value, seen, ctx):
        return {"lora_scalings": seen["lora"]["lora_scalings"]}


@register
class LoraTargets(SettingKnob):
    name = "model.lora_targets"
    default = "attention"
    space = Space(choices=("attention", "qv", "attention_mlp"))
    example = "attention_mlp"
    example_with = {"model.lora_rank": 4}
    description = ("Which Linear layers of the blocks get adapters: attention (q, k, v, out), qv, attention_mlp, "
                   "or comma-separated name suffixes. Matching no module is an error, never a silent no-op.")
    verifies = "the modules carrying adapters are exactly the ones the target selects (and at least one)"
    evidence = ("lora",)

    def validate_value(self, value: str, key: str) -> None:
        if not value.strip():
            raise ConfigError(key, "must name a preset or module name suffixes")

    def judge(self, value, seen, ctx):
        if not ctx.settings.get("model.lora_rank", 0):
            return None
        want = sorted(select_targets(ctx.observed.require("lora_candidate_linears", self.name), value))
        got = sorted(seen["lora"]["lora_module_names"])
        return None if got == want and want else f"adapters on {got}, expected {want}"

    def report(self, value, seen, ctx):
        ev = seen["lora"]
        return {"lora_modules": ev["lora_modules"], "targets": sorted({n.rsplit('.', 1)[-1] for n in ev["lora_module_names"]})}
