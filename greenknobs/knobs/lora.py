"""LoRA knobs (model phase): rank, alpha and target modules, attached through greenknobs.ml.lora.

Rank 0 is the baseline (full fine-tuning). The adapters are attached when the model is handed
over (``trial.model``), after every other model knob (pruning, casting, quantisation: ``order``).
Alpha and targets are settings the rank's mechanism reads; they are judged on its evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from greenknobs.errors import ConfigError
from greenknobs.knobs.base import ObjectKnob, Requires, SettingKnob, Space, register
from greenknobs.ml import instruments, lora
from greenknobs.ml.lora import select_targets


@dataclass
class LoraEvidence:
    candidates: list[str] = field(default_factory=list)  # block Linear names the targets were chosen from
    adapters: dict[str, Any] = field(default_factory=dict)  # ml.lora.lora_evidence of the trained model
    trainable: int | None = None  # parameters that could learn, as training started
    total: int | None = None


@register
class LoraRank(ObjectKnob):
    name = "model.lora_rank"
    default = 0
    space = Space(choices=(0, 4, 8, 16))
    bounds = (0, None)
    example = 4
    description = ("Train low-rank adapters of this rank instead of every weight (0 = full fine-tuning). trial.model "
                   "returns the adapted model: use what it returns.")
    verifies = "adapters attached and their rank; parameters trainable as training started; adapters' B matrices moved from 0"
    acts_on = ("model",)
    needs = (("model",),)
    needs_hint = "the model: model = trial.model(model)"
    evidence_type = LoraEvidence
    order = 10  # last of the model knobs: adapters go on the pruned, cast, quantised model

    def handed(self, kind, model, value, trial):
        ev = trial.evidence(self)
        if trial.may_act(self, kind, model) and value:
            # the model's structure, not the setting: verify re-selects the targets from these names
            ev.candidates = lora.block_linears(model)
            return lora.add_lora(model, value, trial.knob("model.lora_alpha", 16),
                                 trial.knob("model.lora_targets", "attention"), lora.heads(model))
        return model

    def phase_started(self, phase, value, trial):
        model = trial.handed("model")
        if phase == "training" and model is not None:
            ev = trial.evidence(self)
            ev.trainable, ev.total = instruments.trainable_count(model), instruments.parameter_count(model)

    def phase_ended(self, phase, value, trial):
        if phase == "training" and trial.handed("model") is not None:
            trial.evidence(self).adapters = lora.lora_evidence(trial.handed("model"))

    def judge(self, value, ev, ctx):
        adapters, trainable, total = ev.adapters, ev.trainable, ev.total
        if not adapters:
            return "no training phase was watched"
        if value == 0:
            return f"{adapters['lora_modules']} adapters without LoRA" if adapters["lora_modules"] else None
        if not adapters["lora_modules"]:
            return "no adapter was attached"
        if adapters["lora_ranks"] != [value]:
            return f"adapter ranks {adapters['lora_ranks']}"
        if trainable is None or total is None or trainable >= total:
            return f"{trainable} of {total} parameters trainable: base not frozen"
        return "adapters never trained (B is still zero)" if adapters["lora_B_norm"] <= 0 else None

    def report(self, value, ev, ctx):
        return {"lora_modules": ev.adapters.get("lora_modules"), "trainable_parameters": ev.trainable,
                "total_parameters": ev.total,
                "trainable_share": round(ev.trainable / ev.total, 5) if ev.trainable and ev.total else None}


def _adapters(ctx) -> dict[str, Any]:
    ev = ctx.evidence.get("model.lora_rank")
    return ev.adapters if ev is not None else {}


@register
class LoraAlpha(SettingKnob):
    name = "model.lora_alpha"
    requires = Requires(('model.lora_rank',), lambda v: v["model.lora_rank"] > 0, 'model.lora_rank > 0', True)
    default = 16
    space = Space(choices=(8, 16, 32))
    bounds = (1, None)
    example = 32
    example_with = {"model.lora_rank": 4}
    description = "LoRA scaling numerator: adapter output is scaled by alpha / rank (needs model.lora_rank > 0)."
    verifies = "scaling read back from every adapter equals alpha / rank"
    evidence = ()  # read by model.lora_rank's mechanism; judged on its evidence

    def judge(self, value, seen, ctx):
        rank = ctx.trial.params.get("model.lora_rank", 0) if ctx.trial else 0
        want = round(value / rank, 6) if rank else None
        got = _adapters(ctx).get("lora_scalings")
        return f"adapter scalings {got}, expected {want}" if rank and got != [want] else None

    def report(self, value, seen, ctx):
        return {"lora_scalings": _adapters(ctx).get("lora_scalings")}


@register
class LoraTargets(SettingKnob):
    name = "model.lora_targets"
    requires = Requires(('model.lora_rank',), lambda v: v["model.lora_rank"] > 0, 'model.lora_rank > 0', True)
    default = "attention"
    space = Space(choices=("attention", "qv", "attention_mlp"))
    example = "attention_mlp"
    example_with = {"model.lora_rank": 4}
    description = ("Which Linear layers of the blocks get adapters: attention (q, k, v, out), qv, attention_mlp, "
                   "or comma-separated name suffixes. Matching no module is an error, never a silent no-op.")
    verifies = "the modules carrying adapters are exactly the ones the target selects (and at least one)"
    evidence = ()  # read by model.lora_rank's mechanism; judged on its evidence

    def validate_value(self, value: str, key: str) -> None:
        if not value.strip():
            raise ConfigError(key, "must name a preset or module name suffixes")

    def judge(self, value, seen, ctx):
        if not (ctx.trial.params.get("model.lora_rank", 0) if ctx.trial else 0):
            return None
        rank_ev = ctx.evidence.get("model.lora_rank")
        want = sorted(select_targets(rank_ev.candidates if rank_ev else [], value))
        got = sorted(_adapters(ctx).get("lora_module_names", []))
        return None if got == want and want else f"adapters on {got}, expected {want}"

    def report(self, value, seen, ctx):
        ev = _adapters(ctx)
        return {"lora_modules": ev.get("lora_modules"), "targets": sorted({n.rsplit('.', 1)[-1] for n in ev.get("lora_module_names", [])})}
