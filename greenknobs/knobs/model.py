"""Model-phase knobs: change the network before it is fine-tuned."""

from __future__ import annotations

from typing import Any

from greenknobs import layers
from greenknobs.errors import ConfigError, KnobError
from greenknobs.knobs.base import Knob, Space, register
from greenknobs.pruning.trial import prune_in_trial


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@register
class LayersRemoved(Knob):
    name = "model.layers_removed"
    phase = "model"
    default = 0
    space = Space(low=0, high=5, integer=True)
    value_type = int
    description = ("Remove N transformer blocks before fine-tuning, chosen by model.pruning_method (default top-N, "
                   "Why Lift so Heavy?), optionally iterative, compensated and healed (docs/pruning.md).")
    verifies = "block count and config layer count after pruning; parameter count; the pruning report"
    # After the pruning settings (-10), before dtype / quantisation / LoRA knobs (0): layers are
    # scored and removed on the model as loaded.
    order = -5

    def validate_value(self, value: int, key: str) -> None:
        if value < 0:
            raise ConfigError(key, f"must be >= 0, got {value}")

    def apply(self, ctx, value: int) -> None:
        before = layers.layer_count(ctx.model)
        ctx.observed.record("layers_before", before)
        ctx.observed.record("params_before", parameter_count(ctx.model))
        if value >= before:
            raise KnobError(f"{self.name}={value} would remove all {before} layers")
        if not value:
            ctx.observed.record("layers_removed_indices", [])
            return
        # The method, compensation and healing knobs (order -10) have stored their settings by now.
        report = prune_in_trial(ctx, value)
        ctx.observed.record("pruning_report", report)
        ctx.observed.record("layers_removed_indices", report["removed"])
        ctx.detail("pruning", {k: report[k] for k in ("method", "iterative", "compensation", "removed", "merged",
                                                      "alphas", "calibration_samples", "energy_j_modelled")})

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
