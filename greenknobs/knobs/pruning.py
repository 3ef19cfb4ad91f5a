"""How model.layers_removed chooses and repairs the layers it removes (docs/pruning.md).

These knobs only store settings; ``model.layers_removed`` does the pruning. They carry
``order = -10`` so they apply before it within the model phase whatever the experiment's order.
"""

from __future__ import annotations

from typing import Any

from greenknobs.errors import ConfigError, KnobError
from greenknobs.knobs.base import Knob, Space, register
from greenknobs.pruning.methods import METHODS


class _PruningSetting(Knob):
    phase = "model"
    order = -10
    key: str  # ctx.settings key, also the field read back from the pruning report

    def apply(self, ctx, value: Any) -> None:
        ctx.settings[self.key] = value

    def report(self, ctx) -> dict[str, Any] | None:
        """The pruning report, or None when no layer was removed; fails if layers_removed never ran."""
        if ctx.observed.get("layers_before") is None:
            raise KnobError(f"{self.name} did not take effect: model.layers_removed is not part of this experiment")
        return ctx.observed.get("pruning_report")

    def evidence(self, report: dict[str, Any]) -> Any:
        return report[self.key.removeprefix("pruning_")]

    def verify(self, ctx, value: Any) -> dict[str, Any]:
        report = self.report(ctx)
        if report is None:  # model.layers_removed = 0: a vacuous but valid combination
            return {"in_effect": False, "reason": "model.layers_removed = 0"}
        seen = self.evidence(report)
        self.expect(seen == value, f"pruning ran with {seen!r}")
        return {"in_effect": True, "seen": seen}


@register
class PruningMethod(_PruningSetting):
    name = "model.pruning_method"
    key = "pruning_method"
    default = "top"
    space = Space(choices=METHODS)
    value_type = str
    description = ("Which blocks model.layers_removed removes: top/bottom-N, block influence (ShortGPT), angular "
                   "distance (Gromov), SLEB-style loss, task metric (Moslem), Gumbel-TopK mask (E3-Pruner), CoMe merge.")
    verifies = "method recorded by the pruning run, removed indices and per-layer scores"

    def evidence(self, report):
        return report["method"]

    def verify(self, ctx, value):
        out = super().verify(ctx, value)
        report = ctx.observed.get("pruning_report")
        if report:
            self.expect(len(report["removed"]) == report["n_remove"], "removed a different number of layers")
            out.update({"removed": report["removed"], "merged": report["merged"], "score": report["score_name"],
                        "scores": [r["scores"] for r in report["rounds"]],
                        "calibration_samples": report["calibration_samples"],
                        "calibration_tokens": report["calibration_tokens"],
                        "selection_energy_j_modelled": report["energy_j_modelled"]})
        return out


@register
class PruningIterative(_PruningSetting):
    name = "model.pruning_iterative"
    key = "pruning_iterative"
    default = False
    space = Space(choices=(False, True))
    value_type = bool
    description = "Remove one block per round and re-score the pruned (and compensated) model (Prune&Comp, SLEB)."
    verifies = "number of scoring rounds the pruning run made"

    def evidence(self, report):
        return report["iterative"]

    def verify(self, ctx, value):
        out = super().verify(ctx, value)
        report = ctx.observed.get("pruning_report")
        if report:
            rounds = len(report["rounds"])
            self.expect(rounds == (report["n_remove"] if value else 1), f"{rounds} scoring rounds")
            out["rounds"] = rounds
        return out


@register
class PruningCompensation(_PruningSetting):
    name = "model.pruning_compensation"
    key = "pruning_compensation"
    default = False
    space = Space(choices=(False, True))
    value_type = bool
    description = ("Prune&Comp: fuse the magnitude gap alpha of each removed block into the embeddings and earlier "
                   "residual-branch outputs. Pre-norm models only; a post-norm (BERT-family) model fails the trial.")
    verifies = "alpha values fused (one per removed gap)"

    def evidence(self, report):
        return report["compensation"]

    def verify(self, ctx, value):
        out = super().verify(ctx, value)
        report = ctx.observed.get("pruning_report")
        if report:
            self.expect(bool(report["alphas"]) == value, f"alphas {report['alphas']}")
            out["alphas"] = report["alphas"]
        return out


@register
class CalibrationSamples(_PruningSetting):
    name = "model.calibration_samples"
    key = "calibration_samples"
    default = 32
    space = Space(low=8, high=128, integer=True, log=True)
    value_type = int
    description = "Training sequences the pruning method scores layers on (their forward passes count in the model phase)."
    verifies = "calibration sequences and tokens the pruning run used"

    def validate_value(self, value, key):
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")

    def evidence(self, report):
        return report["calibration_samples"]

    def verify(self, ctx, value):
        report = self.report(ctx)
        if report is None or not report["calibration_samples"]:
            return {"in_effect": False, "reason": "no layers removed, or a method without calibration (top/bottom)"}
        n_train = len(getattr(ctx, "train", []) or [])
        self.expect(report["calibration_samples"] == min(value, n_train), f"{report['calibration_samples']} samples used")
        return {"in_effect": True, "samples": report["calibration_samples"], "tokens": report["calibration_tokens"]}


@register
class HealingSteps(_PruningSetting):
    name = "model.healing_steps"
    key = "healing_steps"
    default = 0
    space = Space(low=0, high=200, integer=True)
    value_type = int
    description = "Knowledge-distillation fine-tune of the pruned model from the unpruned one, in steps (0 = off)."
    verifies = "KD steps taken and KD loss before/after on calibration data"

    def validate_value(self, value, key):
        if value < 0:
            raise ConfigError(key, f"must be >= 0, got {value}")

    def verify(self, ctx, value):
        report = self.report(ctx)
        if report is None:
            return {"in_effect": False, "reason": "model.layers_removed = 0"}
        healing = report["healing"]
        if value == 0:
            self.expect(healing is None, "healing ran although steps = 0")
            return {"in_effect": False}
        self.expect(healing is not None and healing["steps"] == value, f"healing record {healing}")
        return {"in_effect": True, **healing}


class _HealingParam(_PruningSetting):
    field: str

    def verify(self, ctx, value):
        report = self.report(ctx)
        healing = report and report["healing"]
        if not healing or healing[self.field] is None:
            return {"in_effect": False, "reason": "no healing, or a classifier (hidden-state distillation)"}
        self.expect(healing[self.field] == value, f"healing ran with {healing[self.field]!r}")
        return {"in_effect": True, self.field: healing[self.field]}


@register
class HealingLambda(_HealingParam):
    name = "model.healing_lambda"
    key = "healing_lambda"
    field = "lambda"
    default = 0.5
    space = Space(low=0.0, high=1.0)
    value_type = float
    description = "Weight of the KD term in healing: (1 - lambda) * CE + lambda * T^2 * KL."
    verifies = "lambda recorded by the healing run"

    def validate_value(self, value, key):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(key, f"must be in [0, 1], got {value}")


@register
class HealingTemperature(_HealingParam):
    name = "model.healing_temperature"
    key = "healing_temperature"
    field = "temperature"
    default = 2.0
    space = Space(low=1.0, high=8.0)
    value_type = float
    description = "Softmax temperature of the healing distillation."
    verifies = "temperature recorded by the healing run"

    def validate_value(self, value, key):
        if value <= 0:
            raise ConfigError(key, f"must be > 0, got {value}")


@register
class HealingEntropyWeight(_HealingParam):
    name = "model.healing_entropy_weight"
    key = "healing_entropy_weight"
    field = "entropy_weighted"
    default = False
    space = Space(choices=(False, True))
    value_type = bool
    description = "E3-Pruner-style per-token KD weight lambda_t = clamp(lambda * H_t / mean H, 0, 1) from teacher entropy."
    verifies = "entropy weighting recorded by the healing run"
