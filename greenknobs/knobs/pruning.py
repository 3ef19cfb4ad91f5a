"""How model.layers_removed chooses and repairs the layers it removes (docs/pruning.md).

These knobs only choose settings; ``model.layers_removed`` does the pruning with them. They carry
``order = -10`` so they apply before it within the model phase, whatever the experiment's order.
Their evidence is the pruning run's own report: the method that chose, the rounds it scored,
the alphas it fused, the healing steps it took.
"""

from __future__ import annotations

from typing import Any

from greenknobs.errors import KnobError
from greenknobs.knobs.base import REGISTRY, Requires, SettingKnob, Space, register
from greenknobs.ml.pruning.methods import METHODS, choice_problem
from greenknobs.ml.pruning.trial import PruneOptions

# knob name -> PruneOptions field
OPTION_OF = {"model.pruning_method": "method", "model.pruning_iterative": "iterative",
             "model.pruning_compensation": "compensation", "model.calibration_samples": "calibration_samples",
             "model.healing_steps": "healing_steps", "model.healing_lambda": "healing_lambda",
             "model.healing_temperature": "healing_temperature", "model.healing_entropy_weight": "healing_entropy_weight"}


def prune_options(trial) -> PruneOptions:
    """The pruning settings of this trial (read as the mechanism's settings); undeclared: defaults."""
    return PruneOptions(**{field: trial.knob(name, REGISTRY[name].default) for name, field in OPTION_OF.items()})


_CALIBRATING = {"block_influence", "angular", "iterative_loss", "iterative_metric", "learned_mask", "merge"}


def _calibrates(v) -> bool:
    return v["model.layers_removed"] > 0 and (v["model.pruning_method"] in _CALIBRATING
                                              or v.get("model.pruning_compensation") or v.get("model.healing_steps", 0) > 0)


class PruningSetting(SettingKnob):
    """A pruning setting; ``seen`` is the pruning report (None when no layer was removed)."""

    phase = "model"
    order = -10
    example_with = {"model.layers_removed": 1}

    def pruning_report(self, ctx) -> dict[str, Any] | None:
        """The pruning run's report; None when it removed nothing. Fails when pruning never ran."""
        ev = ctx.evidence.get("model.layers_removed")
        if ev is None:  # model.layers_removed never acted
            raise KnobError(f"{self.name} did not take effect: model.layers_removed is not part of this trial")
        return ev.pruning

    def verify(self, ctx, value: Any) -> dict[str, Any]:
        report = self.pruning_report(ctx)
        if report is None:  # model.layers_removed = 0: a vacuous but valid combination
            return {"in_effect": False, "reason": "model.layers_removed = 0"}
        problem = self.judge(value, report, ctx)
        if problem:
            raise KnobError(f"{self.name} did not take effect: {problem}")
        return {"in_effect": True, **self.report(value, report, ctx)}


@register
class PruningMethod(PruningSetting):
    name = "model.pruning_method"
    requires = Requires(('model.layers_removed',), lambda v: v["model.layers_removed"] > 0, 'model.layers_removed > 0')
    default = "top"
    space = Space(choices=METHODS)
    example = "block_influence"
    description = ("Which blocks model.layers_removed removes: top/bottom-N, block influence (ShortGPT), angular "
                   "distance (Gromov), SLEB-style loss, task metric (Moslem), Gumbel-TopK mask (E3-Pruner), CoMe merge.")
    verifies = ("every round's removals re-derived from the per-layer scores that round computed, under the "
                "method's rule (lowest block influence, last k, ...)")

    def judge(self, value, report, ctx):
        if len(report["removed"]) != report["n_remove"]:
            return "removed a different number of layers"
        for i, rnd in enumerate(report["rounds"]):
            problem = choice_problem(value, rnd)
            if problem:
                return f"round {i + 1}: {problem}"
        return None

    def report(self, value, report, ctx):
        return {"rules": [r.get("rule") for r in report["rounds"]], "removed": report["removed"], "merged": report["merged"],
                "score": report["score_name"], "scores": [r["scores"] for r in report["rounds"]],
                "calibration_samples": report["calibration_samples"], "calibration_tokens": report["calibration_tokens"],
                "selection_energy": report["selection_energy"]}


@register
class PruningIterative(PruningSetting):
    name = "model.pruning_iterative"
    requires = Requires(("model.layers_removed",), lambda v: v["model.layers_removed"] > 1,
                        "model.layers_removed > 1 (one block is removed in one round either way)")
    default = False
    space = Space(choices=(False, True))
    example = True
    example_with = {"model.layers_removed": 2, "model.pruning_method": "block_influence"}
    description = "Remove one block per round and re-score the pruned (and compensated) model (Prune&Comp, SLEB)."
    verifies = "number of scoring rounds the pruning run made"

    def judge(self, value, report, ctx):
        rounds = len(report["rounds"])
        return None if rounds == (report["n_remove"] if value else 1) else f"{rounds} scoring rounds for {report['n_remove']} blocks"

    def report(self, value, report, ctx):
        return {"rounds": len(report["rounds"])}


@register
class PruningCompensation(PruningSetting):
    name = "model.pruning_compensation"
    requires = Requires(('model.layers_removed',), lambda v: v["model.layers_removed"] > 0, 'model.layers_removed > 0')
    default = False
    space = Space(choices=(False, True))
    example = True
    description = ("Prune&Comp: fuse the magnitude gap alpha of each removed block into the embeddings and earlier "
                   "residual-branch outputs. Pre-norm models only; a post-norm (BERT-family) model fails the trial.")
    verifies = "alpha values fused (one per removed gap)"

    def judge(self, value, report, ctx):
        return None if bool(report["alphas"]) == value else f"alphas fused: {report['alphas']}"

    def report(self, value, report, ctx):
        return {"alphas": report["alphas"]}


@register
class CalibrationSamples(PruningSetting):
    name = "model.calibration_samples"
    requires = Requires(("model.layers_removed", "model.pruning_method"), _calibrates,
                        "layers removed by a method that scores calibration data (or compensation, or healing)")
    default = 32
    space = Space(low=8, high=128, integer=True, log=True)
    bounds = (1, None)
    example = 8
    example_with = {"model.layers_removed": 1, "model.pruning_method": "block_influence"}
    description = "Training sequences the pruning method scores layers on (their forward passes count in the model phase)."
    verifies = "calibration sequences and tokens the pruning run used"

    def verify(self, ctx, value):
        report = self.pruning_report(ctx)
        if report is not None and not report["calibration_samples"]:
            return {"in_effect": False, "reason": "a method without calibration (top/bottom)"}
        return super().verify(ctx, value)

    def judge(self, value, report, ctx):
        used = report["calibration_samples"]
        return None if used == min(value, report["calibration_rows_available"]) else f"{used} samples used"

    def report(self, value, report, ctx):
        return {"samples": report["calibration_samples"], "tokens": report["calibration_tokens"]}


@register
class HealingSteps(PruningSetting):
    name = "model.healing_steps"
    requires = Requires(('model.layers_removed',), lambda v: v["model.layers_removed"] > 0, 'model.layers_removed > 0')
    default = 0
    space = Space(low=0, high=200, integer=True)
    bounds = (0, None)
    example = 2
    description = "Knowledge-distillation fine-tune of the pruned model from the unpruned one, in steps (0 = off)."
    verifies = "optimizer steps the healing loop took (counted as they ran) and KD loss before/after on calibration data"

    def judge(self, value, report, ctx):
        healing = report["healing"]
        if value == 0:
            return "healing ran although steps = 0" if healing is not None else None
        return None if healing is not None and healing["steps_taken"] == value else f"healing record {healing}"

    def report(self, value, report, ctx):
        return dict(report["healing"] or {})


class HealingParam(PruningSetting):
    """A setting of the healing loss, read back from what the healing loss computed with."""

    field: str
    example_with = {"model.layers_removed": 1, "model.healing_steps": 2}

    def verify(self, ctx, value):
        report = self.pruning_report(ctx)
        healing = report and report["healing"]
        if not healing or healing[self.field] is None:
            return {"in_effect": False, "reason": "no healing, or a classifier (hidden-state distillation)"}
        return super().verify(ctx, value)

    def judge(self, value, report, ctx):
        seen = report["healing"][self.field]
        ok = seen == value if isinstance(value, bool) else abs(seen - value) <= 1e-4 * max(1.0, abs(value))
        return None if ok else f"the healing loss computed with {seen!r}"

    def report(self, value, report, ctx):
        return {self.field: report["healing"][self.field]}


@register
class HealingLambda(HealingParam):
    name = "model.healing_lambda"
    requires = Requires(('model.healing_steps',), lambda v: v["model.healing_steps"] > 0, 'model.healing_steps > 0')
    field = "lambda_seen"
    default = 0.5
    space = Space(low=0.0, high=1.0)
    bounds = (0.0, 1.0)
    example = 0.25
    description = "Weight of the KD term in healing: (1 - lambda) * CE + lambda * T^2 * KL."
    verifies = "the mean per-token KD weight before clamping, computed inside the healing loss"


@register
class HealingTemperature(HealingParam):
    name = "model.healing_temperature"
    requires = Requires(('model.healing_steps',), lambda v: v["model.healing_steps"] > 0, 'model.healing_steps > 0')
    field = "temperature_seen"
    default = 2.0
    space = Space(low=1.0, high=8.0)
    bounds = (1e-6, None)
    example = 4.0
    description = "Softmax temperature of the healing distillation."
    verifies = "teacher logits' spread / softened spread inside the healing loss"


@register
class HealingEntropyWeight(HealingParam):
    name = "model.healing_entropy_weight"
    requires = Requires(('model.healing_steps',), lambda v: v["model.healing_steps"] > 0, 'model.healing_steps > 0')
    field = "entropy_weighted_seen"
    default = False
    space = Space(choices=(False, True))
    example = True
    description = "E3-Pruner-style per-token KD weight lambda_t = clamp(lambda * H_t / mean H, 0, 1) from teacher entropy."
    verifies = "whether the per-token KD weights varied across tokens inside the healing loss"
