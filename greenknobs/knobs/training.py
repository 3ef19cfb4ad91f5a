"""Training-phase knobs: how long, how fast and in which precision the model learns."""

from __future__ import annotations

import math
from typing import Any

import torch

from greenknobs.errors import ConfigError, IncompatibleKnobs
from greenknobs.knobs.base import Knob, Space, register

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@register
class Epochs(Knob):
    name = "training.epochs"
    phase = "training"
    default = 1
    space = Space(low=1, high=3, integer=True)
    value_type = int
    description = "Passes over the training data."
    verifies = "epochs the training loop completed and optimizer steps taken"

    def validate_value(self, value: int, key: str) -> None:
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")

    def apply(self, ctx, value: int) -> None:
        ctx.settings["epochs"] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        done = ctx.observed.require("epochs_completed", self.name)
        self.expect(done == value, f"{done} epochs ran")
        return {"epochs_completed": done, "optimizer_steps": ctx.observed.get("optimizer_steps")}


@register
class LearningRate(Knob):
    name = "training.learning_rate"
    phase = "training"
    default = 5e-5
    space = Space(low=1e-5, high=5e-4, log=True)
    value_type = float
    description = "Peak AdamW learning rate (fewer, cheaper steps need larger ones)."
    verifies = "learning rate read back from the optimizer's parameter groups"

    def validate_value(self, value: float, key: str) -> None:
        if not 0.0 < value < 1.0:
            raise ConfigError(key, f"must be in (0, 1), got {value}")

    def apply(self, ctx, value: float) -> None:
        ctx.settings["learning_rate"] = value

    def verify(self, ctx, value: float) -> dict[str, Any]:
        lr = ctx.observed.require("optimizer_lr", self.name)
        self.expect(math.isclose(lr, value, rel_tol=1e-9), f"optimizer ran at {lr}")
        return {"optimizer_lr": lr}


@register
class Precision(Knob):
    name = "training.precision"
    phase = "training"
    default = "fp32"
    space = Space(choices=("fp32", "bf16", "fp16"))
    value_type = str
    description = "Mixed precision for training: autocast to bf16 (CPU or GPU) or fp16 (GPU, with loss scaling)."
    verifies = "dtype of the logits in a real training forward pass"

    def check(self, value: str, runtime) -> None:
        if value == "fp16" and runtime.device != "cuda":
            raise IncompatibleKnobs("training.precision=fp16 needs a CUDA GPU (CPU autocast supports bf16 only)")

    def apply(self, ctx, value: str) -> None:
        ctx.settings["autocast_dtype"] = AUTOCAST_DTYPES[value]

    def verify(self, ctx, value: str) -> dict[str, Any]:
        seen = ctx.observed.require("train_logits_dtype", self.name)
        want = str(AUTOCAST_DTYPES[value] or torch.float32)
        self.expect(seen == want, f"logits were {seen}, expected {want}")
        return {"train_logits_dtype": seen}
