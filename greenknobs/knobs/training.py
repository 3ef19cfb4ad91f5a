"""Training-phase knobs: how long, how fast, in which precision and with which extras the model learns."""

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
        self.expect(done == value or (ctx.observed.get("early_stopped") and done <= value), f"{done} epochs ran")
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
        # without autocast the logits keep the weights' own dtype (model.weight_dtype may store bf16)
        want = str(AUTOCAST_DTYPES[value]) if AUTOCAST_DTYPES[value] else ctx.observed.get("train_weight_dtype", str(torch.float32))
        self.expect(seen == want, f"logits were {seen}, expected {want}")
        return {"train_logits_dtype": seen}


@register
class GradientCheckpointing(Knob):
    name = "training.gradient_checkpointing"
    phase = "training"
    default = False
    space = Space(choices=(False, True))
    value_type = bool
    description = "Recompute block activations in the backward pass instead of storing them (less memory, more compute)."
    verifies = "forward calls of the top block in one training step: 2 when recomputed, 1 otherwise"

    def apply(self, ctx, value: bool) -> None:
        ctx.settings["gradient_checkpointing"] = value

    def verify(self, ctx, value: bool) -> dict[str, Any]:
        calls = ctx.observed.require("top_block_calls_first_step", self.name)
        self.expect(calls == (2 if value else 1), f"the top block ran {calls} times in one step")
        return {"top_block_calls_per_step": calls}


@register
class GradientAccumulation(Knob):
    name = "training.grad_accumulation"
    phase = "training"
    default = 1
    space = Space(choices=(1, 2, 4))
    value_type = int
    description = "Micro-batches per optimizer step (a larger effective batch without the memory)."
    verifies = "micro-batches and optimizer steps the loop took"

    def validate_value(self, value: int, key: str) -> None:
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")

    def apply(self, ctx, value: int) -> None:
        ctx.settings["grad_accumulation"] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        per_epoch = ctx.observed.require("micro_batches_per_epoch", self.name)
        epochs = ctx.observed.require("epochs_completed", self.name)
        steps = ctx.observed.require("optimizer_steps", self.name)
        full = -(-per_epoch // value) * epochs
        # early stopping may end the last epoch early: never more steps than planned, always grouped by value
        self.expect(steps <= full and ctx.observed.get("micro_batches") <= steps * value,
                    f"{steps} optimizer steps for {ctx.observed.get('micro_batches')} micro-batches")
        self.expect(steps == full or ctx.observed.get("early_stopped"), f"{steps} steps, expected {full}")
        return {"micro_batches": ctx.observed.get("micro_batches"), "optimizer_steps": steps}


OPTIMIZERS = ("adamw", "adafactor", "sgd", "adamw_8bit")
OPTIMIZER_CLASSES = {"adamw": "AdamW", "adafactor": "Adafactor", "sgd": "SGD", "adamw_8bit": "AdamW8bit"}


@register
class Optimizer(Knob):
    name = "training.optimizer"
    phase = "training"
    default = "adamw"
    space = Space(choices=OPTIMIZERS)
    value_type = str
    description = ("adamw (torch), adafactor (factored second moments: less optimizer memory), sgd (momentum 0.9), "
                   "adamw_8bit (bitsandbytes, CUDA only).")
    verifies = "class of the optimizer that stepped"

    def check(self, value: str, runtime) -> None:
        if value == "adamw_8bit":
            from greenknobs import bnb

            reason = bnb.available(runtime.device)
            if reason:
                raise IncompatibleKnobs(f"training.optimizer=adamw_8bit: {reason}")

    def apply(self, ctx, value: str) -> None:
        ctx.settings["optimizer"] = value

    def verify(self, ctx, value: str) -> dict[str, Any]:
        cls = ctx.observed.require("optimizer_class", self.name)
        self.expect(cls == OPTIMIZER_CLASSES[value], f"the optimizer was {cls}")
        return {"optimizer_class": cls}


@register
class EarlyStopping(Knob):
    name = "training.early_stopping_patience"
    phase = "training"
    default = 0
    space = Space(choices=(0, 1, 2))
    value_type = int
    description = ("Evaluate validation quality twice per epoch; stop after this many evaluations without "
                   "improvement and keep the best weights (0 = off: no validation passes at all).")
    verifies = "validation history, whether and where training stopped, that the stop rule was met"

    def validate_value(self, value: int, key: str) -> None:
        if value < 0:
            raise ConfigError(key, f"must be >= 0, got {value}")

    def apply(self, ctx, value: int) -> None:
        ctx.settings["early_stopping_patience"] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        history = ctx.observed.require("validation_history", self.name)
        stopped = ctx.observed.require("early_stopped", self.name)
        if value == 0:
            self.expect(not history and not stopped, f"{len(history)} validation passes with early stopping off")
        else:
            self.expect(bool(history), "no validation pass ran")
            best = max(range(len(history)), key=lambda i: (history[i], -i))
            since_best = len(history) - 1 - best
            self.expect(since_best >= value if stopped else since_best <= value,
                        f"stopped={stopped} with {since_best} evaluations since the best")
        return {"validation_history": [round(h, 5) for h in history], "early_stopped": stopped,
                "optimizer_steps": ctx.observed.get("optimizer_steps")}


@register
class FreezeLayers(Knob):
    name = "training.freeze_layers"
    phase = "training"
    default = 0
    space = Space(choices=(0, 1, 2, 3))
    value_type = int
    description = "Freeze the embeddings and the bottom k blocks (no gradients, no optimizer state for them)."
    verifies = "frozen blocks' weights unchanged by training (checksums); trainable parameter count"

    def validate_value(self, value: int, key: str) -> None:
        if value < 0:
            raise ConfigError(key, f"must be >= 0, got {value}")

    def apply(self, ctx, value: int) -> None:
        ctx.settings["freeze_layers"] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        ev = ctx.observed.require("freeze", self.name)
        self.expect(ev["frozen_blocks"] == value, f"{ev['frozen_blocks']} blocks frozen")
        if value:
            self.expect(ev["unchanged"], "a frozen block's weights changed during training")
        return {**ev, "trainable_parameters": ctx.observed.get("trainable_parameters")}


@register
class DistillationLambda(Knob):
    name = "training.kd_lambda"
    phase = "training"
    default = 0.0
    space = Space(choices=(0.0, 0.25, 0.5, 0.75))
    value_type = float
    description = ("Knowledge distillation from the unpruned model: loss = (1-λ)·CE + λ·T²·KL(teacher_T ‖ student_T). "
                   "The teacher's forward passes run inside the training window, so their energy is counted.")
    verifies = "teacher forward passes (one per micro-batch), teacher size, mean distillation loss"

    def validate_value(self, value: float, key: str) -> None:
        if not 0.0 <= value <= 1.0:
            raise ConfigError(key, f"must be in [0, 1], got {value}")

    def apply(self, ctx, value: float) -> None:
        ctx.settings["kd_lambda"] = value

    def verify(self, ctx, value: float) -> dict[str, Any]:
        ev = ctx.observed.require("distillation", self.name)
        if value == 0:
            self.expect(ev["teacher_forwards"] == 0, "a teacher ran without distillation")
        else:
            self.expect(ev["teacher_forwards"] == ctx.observed.get("micro_batches"),
                        f"{ev['teacher_forwards']} teacher passes for {ctx.observed.get('micro_batches')} micro-batches")
            self.expect(ev["kd_loss_mean"] > 0, "distillation loss was zero")
        return ev


@register
class DistillationTemperature(Knob):
    name = "training.kd_temperature"
    phase = "training"
    default = 2.0
    space = Space(choices=(1.0, 2.0, 4.0))
    value_type = float
    description = "Softmax temperature of distillation (needs training.kd_lambda > 0)."
    verifies = "temperature the distillation loss was computed with"

    def validate_value(self, value: float, key: str) -> None:
        if value <= 0:
            raise ConfigError(key, f"must be > 0, got {value}")

    def apply(self, ctx, value: float) -> None:
        ctx.settings["kd_temperature"] = value

    def verify(self, ctx, value: float) -> dict[str, Any]:
        ev = ctx.observed.require("distillation", self.name)
        if ev["teacher_forwards"]:
            self.expect(ev["temperature"] == value, f"distilled at T={ev['temperature']}")
        return {"temperature": ev["temperature"]}


@register
class ExitHeadDepth(Knob):
    name = "training.exit_head_depth"
    phase = "training"
    default = 0.0
    space = Space(choices=(0.0, 0.34, 0.5, 0.67))
    value_type = float
    description = ("Train an early-exit classifier after this fraction of the blocks, jointly with the model "
                   "(0 = none). inference.early_exit uses it.")
    verifies = "exit head trained: its block index, its mean loss, its weights moved"

    def validate_value(self, value: float, key: str) -> None:
        if not 0.0 <= value < 1.0:
            raise ConfigError(key, f"must be in [0, 1), got {value}")

    def apply(self, ctx, value: float) -> None:
        ctx.settings["exit_head_depth"] = value

    def verify(self, ctx, value: float) -> dict[str, Any]:
        ev = ctx.observed.require("exit_head", self.name)
        if value == 0:
            self.expect(ev["block"] == 0, "an exit head was trained")
        else:
            self.expect(ev["block"] > 0 and ev["steps"] > 0 and ev["weights_moved"], f"exit head not trained: {ev}")
        return ev
