"""System-phase knobs: how the runtime executes the work."""

from __future__ import annotations

import os
from typing import Any

import torch

from greenknobs.errors import ConfigError
from greenknobs.knobs.base import Knob, Space, register


@register
class Threads(Knob):
    name = "system.threads"
    phase = "system"
    default = len(os.sched_getaffinity(0))  # torch's own default: one thread per usable core
    space = Space(choices=tuple(sorted({1, 2, 4, 8, default})))
    value_type = int
    description = "Intra-op CPU threads for training and inference (torch.set_num_threads)."
    verifies = "torch.get_num_threads() read inside the training and inference loops"

    def validate_value(self, value: int, key: str) -> None:
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")

    def apply(self, ctx, value: int) -> None:
        torch.set_num_threads(value)

    def verify(self, ctx, value: int) -> dict[str, Any]:
        train = ctx.observed.require("threads_in_training", self.name)
        infer = ctx.observed.require("threads_in_inference", self.name)
        self.expect(train == value and infer == value, f"training used {train}, inference {infer}")
        return {"threads_in_training": train, "threads_in_inference": infer}


@register
class TrainBatchSize(Knob):
    name = "system.train_batch_size"
    phase = "system"
    default = 16
    space = Space(choices=(8, 16, 32, 64))
    value_type = int
    description = "Examples per training step."
    verifies = "largest training batch the loop built"

    def validate_value(self, value: int, key: str) -> None:
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")

    def apply(self, ctx, value: int) -> None:
        ctx.settings["train_batch_size"] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        seen = ctx.observed.require("train_batch_size_max", self.name)
        n = ctx.observed.require("train_examples_per_epoch", self.name)
        self.expect(seen == min(value, n), f"largest batch was {seen}")
        return {"train_batch_size_max": seen}
