"""Data-phase knobs: how much data, and how long each example is."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from greenknobs.errors import ConfigError
from greenknobs.knobs.base import Knob, Space, register


def stratified_subset(examples: list[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """Keep ``fraction`` of the examples, the same fraction of each label (seeded)."""
    if fraction >= 1.0:
        return list(examples)
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[ex.get("label")].append(i)
    rng = random.Random(seed)
    keep: list[int] = []
    for label in sorted(groups, key=str):
        idx = groups[label]
        rng.shuffle(idx)
        keep.extend(idx[: max(1, round(len(idx) * fraction))])
    return [examples[i] for i in sorted(keep)]


@register
class TrainFraction(Knob):
    name = "data.train_fraction"
    phase = "data"
    default = 1.0
    space = Space(low=0.1, high=1.0)
    value_type = float
    description = "Train on a stratified, seeded fraction of the training split."
    verifies = "examples the training loop actually consumed per epoch"

    def validate_value(self, value: float, key: str) -> None:
        if not 0.0 < value <= 1.0:
            raise ConfigError(key, f"must be in (0, 1], got {value}")

    def apply(self, ctx, value: float) -> None:
        ctx.observed.record("train_examples_available", len(ctx.train))
        ctx.train = stratified_subset(ctx.train, value, ctx.seed)
        ctx.observed.record("train_examples_kept", len(ctx.train))

    def verify(self, ctx, value: float) -> dict[str, Any]:
        available = ctx.observed.require("train_examples_available", self.name)
        used = ctx.observed.require("train_examples_per_epoch", self.name)
        kept = ctx.observed.require("train_examples_kept", self.name)
        self.expect(used == kept, f"training consumed {used} examples per epoch, expected {kept}")
        self.expect(abs(used / available - value) <= 0.02 + 5 / available,
                    f"{used}/{available} examples is not a fraction of {value}")
        return {"train_examples_used": used, "train_examples_available": available}


@register
class MaxSeqLen(Knob):
    name = "data.max_seq_len"
    phase = "data"
    default = 512
    space = Space(choices=(32, 64, 128, 256, 512))
    value_type = int
    description = "Truncate every input to this many tokens (attention cost grows with its square)."
    verifies = "longest input the model was fed, in tokens"

    def validate_value(self, value: int, key: str) -> None:
        if value < 8:
            raise ConfigError(key, f"must be at least 8 tokens, got {value}")

    def apply(self, ctx, value: int) -> None:
        ctx.settings["max_seq_len"] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        longest = ctx.observed.require("longest_input_tokens", self.name)
        self.expect(longest <= value, f"an input of {longest} tokens reached the model")
        return {"longest_input_tokens": longest, "inputs_cut_at_limit": ctx.observed.get("truncated_train_inputs")}
