"""Training-phase knobs: how long, how fast, in which precision and with which extras the model learns."""

from __future__ import annotations

import math

from greenknobs.errors import IncompatibleKnobs
from greenknobs.knobs.base import SettingKnob, Space, register

# CPU autocast supports bf16 only, and fp16 matmuls on a CPU are slow and unstable
FP16_NEEDS_CUDA: dict[str, tuple[str, ...]] = {"fp16": ("cuda",)}


@register
class Epochs(SettingKnob):
    name = "training.epochs"
    default = 1
    space = Space(low=1, high=3, integer=True)
    bounds = (1, None)
    example = 2
    description = "Passes over the training data."
    verifies = "epochs the training loop completed and optimizer steps taken"
    evidence = ("epochs_completed",)

    def judge(self, value, seen, ctx):
        done = seen["epochs_completed"]
        return None if done == value or (ctx.observed.get("early_stopped") and done <= value) else f"{done} epochs ran"

    def report(self, value, seen, ctx):
        return {**seen, "optimizer_steps": ctx.observed.get("optimizer_steps")}


@register
class LearningRate(SettingKnob):
    name = "training.learning_rate"
    default = 5e-5
    space = Space(low=1e-5, high=5e-4, log=True)
    bounds = (1e-12, 0.999999)
    example = 3e-4
    description = "Peak AdamW learning rate (fewer, cheaper steps need larger ones)."
    verifies = "the rate the optimizer stepped with on its first step (a step pre-hook), and that it stepped"
    evidence = ("optimizer_lr", "optimizer_steps_taken")

    def judge(self, value, seen, ctx):
        if not seen["optimizer_steps_taken"]:
            return "the optimizer never stepped"
        return None if math.isclose(seen["optimizer_lr"], value, rel_tol=1e-9) else f"optimizer stepped at {seen['optimizer_lr']}"

    def report(self, value, seen, ctx):
        return {**seen, "optimizer_lr_last": ctx.observed.get("optimizer_lr_last")}


@register
class Precision(SettingKnob):
    name = "training.precision"
    default = "fp32"
    space = Space(choices=("fp32", "bf16", "fp16"))
    value_devices = FP16_NEEDS_CUDA
    example = "bf16"
    description = "Mixed precision for training: autocast to bf16 (CPU or GPU) or fp16 (GPU, with loss scaling)."
    verifies = "dtype of the logits in a real training forward pass"
    evidence = ("train_logits_dtype",)

    def judge(self, value, seen, ctx):
        # without autocast the logits keep the weights' own dtype (model.weight_dtype may store bf16)
        want = {"bf16": "torch.bfloat16", "fp16": "torch.float16"}.get(value) or ctx.observed.get("train_weight_dtype", "torch.float32")
        return None if seen["train_logits_dtype"] == want else f"logits were {seen['train_logits_dtype']}, expected {want}"


@register
class GradientCheckpointing(SettingKnob):
    name = "training.gradient_checkpointing"
    default = False
    space = Space(choices=(False, True))
    example = True
    description = "Recompute block activations in the backward pass instead of storing them (less memory, more compute)."
    verifies = "forward calls of the top block in one training step: 2 when recomputed, 1 otherwise"
    evidence = ("top_block_calls_first_step",)

    def judge(self, value, seen, ctx):
        calls = seen["top_block_calls_first_step"]
        return None if calls == (2 if value else 1) else f"the top block ran {calls} times in one step"


@register
class GradientAccumulation(SettingKnob):
    name = "training.grad_accumulation"
    default = 1
    space = Space(choices=(1, 2, 4))
    bounds = (1, None)
    example = 2
    description = "Micro-batches per optimizer step (a larger effective batch without the memory)."
    verifies = "micro-batches and optimizer steps the loop took"
    evidence = ("micro_batches_per_epoch", "epochs_completed", "optimizer_steps", "micro_batches")

    def judge(self, value, seen, ctx):
        steps, micro = seen["optimizer_steps"], seen["micro_batches"]
        full = -(-seen["micro_batches_per_epoch"] // value) * seen["epochs_completed"]
        # early stopping may end the last epoch early: never more steps than planned, always grouped by value
        if steps > full or micro > steps * value:
            return f"{steps} optimizer steps for {micro} micro-batches"
        return None if steps == full or ctx.observed.get("early_stopped") else f"{steps} steps, expected {full}"

    def report(self, value, seen, ctx):
        return {"micro_batches": seen["micro_batches"], "optimizer_steps": seen["optimizer_steps"]}


OPTIMIZER_CLASSES = {"adamw": "AdamW", "adafactor": "Adafactor", "sgd": "SGD", "adamw_8bit": "AdamW8bit"}


@register
class Optimizer(SettingKnob):
    name = "training.optimizer"
    default = "adamw"
    space = Space(choices=tuple(OPTIMIZER_CLASSES))
    example = "sgd"
    description = ("adamw (torch), adafactor (factored second moments: less optimizer memory), sgd (momentum 0.9), "
                   "adamw_8bit (bitsandbytes, CUDA only).")
    verifies = "class of the optimizer that stepped, read when it stepped"
    evidence = ("optimizer_class",)

    def check(self, value: str, runtime) -> None:
        if value == "adamw_8bit":
            from greenknobs.ml import bnb

            reason = bnb.available(runtime.device)
            if reason:
                raise IncompatibleKnobs(f"training.optimizer=adamw_8bit: {reason}")

    def judge(self, value, seen, ctx):
        cls = seen["optimizer_class"]
        return None if cls == OPTIMIZER_CLASSES[value] else f"the optimizer was {cls}"


@register
class EarlyStopping(SettingKnob):
    name = "training.early_stopping_patience"
    default = 0
    space = Space(choices=(0, 1, 2))
    bounds = (0, None)
    example = 1
    example_with = {"training.epochs": 3}
    description = ("Evaluate validation quality twice per epoch; stop after this many evaluations without "
                   "improvement and keep the best weights (0 = off: no validation passes at all).")
    verifies = "validation history, whether and where training stopped, that the stop rule was met"
    evidence = ("validation_history", "early_stopped")

    def judge(self, value, seen, ctx):
        history, stopped = seen["validation_history"], seen["early_stopped"]
        if value == 0:
            return f"{len(history)} validation passes with early stopping off" if history or stopped else None
        if not history:
            return "no validation pass ran"
        best = max(range(len(history)), key=lambda i: (history[i], -i))
        since_best = len(history) - 1 - best
        ok = since_best >= value if stopped else since_best <= value
        return None if ok else f"stopped={stopped} with {since_best} evaluations since the best"

    def report(self, value, seen, ctx):
        return {"validation_history": [round(h, 5) for h in seen["validation_history"]],
                "early_stopped": seen["early_stopped"], "optimizer_steps": ctx.observed.get("optimizer_steps")}


@register
class FreezeLayers(SettingKnob):
    name = "training.freeze_layers"
    default = 0
    space = Space(choices=(0, 1, 2, 3))
    bounds = (0, None)
    example = 2
    description = "Freeze the embeddings and the bottom k blocks (no gradients, no optimizer state for them)."
    verifies = "frozen blocks' weights unchanged by training (checksums); trainable parameter count"
    evidence = ("freeze",)

    def judge(self, value, seen, ctx):
        ev = seen["freeze"]
        if ev["frozen_blocks"] != value:
            return f"{ev['frozen_blocks']} blocks frozen"
        return "a frozen block's weights changed during training" if value and not ev["unchanged"] else None

    def report(self, value, seen, ctx):
        return {**seen["freeze"], "trainable_parameters": ctx.observed.get("trainable_parameters")}


@register
class DistillationLambda(SettingKnob):
    name = "training.kd_lambda"
    default = 0.0
    space = Space(choices=(0.0, 0.25, 0.5, 0.75))
    bounds = (0.0, 1.0)
    example = 0.5
    description = ("Knowledge distillation from the unpruned model: loss = (1-λ)·CE + λ·T²·KL(teacher_T ‖ student_T). "
                   "The teacher's forward passes run inside the training window, so their energy is counted.")
    verifies = ("teacher forward passes (one per micro-batch), teacher size, mean distillation loss, and the "
                "weight the combined loss implies: (total - CE) / (KD - CE)")
    evidence = ("distillation", "micro_batches")

    def judge(self, value, seen, ctx):
        ev = seen["distillation"]
        if value == 0:
            return "a teacher ran without distillation" if ev["teacher_forwards"] else None
        if ev["teacher_forwards"] != seen["micro_batches"]:
            return f"{ev['teacher_forwards']} teacher passes for {seen['micro_batches']} micro-batches"
        if ev["kd_loss_mean"] <= 0:
            return "distillation loss was zero"
        lam = ev["lambda_seen"]
        return None if lam is not None and abs(lam - value) <= 1e-3 else f"the losses were mixed with weight {lam}"

    def report(self, value, seen, ctx):
        return seen["distillation"]


@register
class DistillationTemperature(SettingKnob):
    name = "training.kd_temperature"
    default = 2.0
    space = Space(choices=(1.0, 2.0, 4.0))
    bounds = (1e-6, None)
    example = 4.0
    example_with = {"training.kd_lambda": 0.5}
    description = "Softmax temperature of distillation (needs training.kd_lambda > 0)."
    verifies = "temperature the softened logits were divided by (teacher logits' spread / softened spread)"
    evidence = ("distillation",)

    def judge(self, value, seen, ctx):
        ev = seen["distillation"]
        if not ev["teacher_forwards"]:
            return None  # no distillation ran: nothing to be softened (the search canonicalises this away)
        t = ev["temperature_seen"]
        return None if t is not None and abs(t - value) <= 1e-3 * value else f"distilled at T={t}"

    def report(self, value, seen, ctx):
        return {"temperature_seen": seen["distillation"]["temperature_seen"]}


@register
class ExitHeadDepth(SettingKnob):
    name = "training.exit_head_depth"
    default = 0.0
    space = Space(choices=(0.0, 0.34, 0.5, 0.67))
    bounds = (0.0, 0.999999)
    example = 0.5
    description = ("Train an early-exit classifier after this fraction of the blocks, jointly with the model "
                   "(0 = none). inference.early_exit uses it.")
    verifies = ("the block whose output the exit head read in the first training forward pass (matched by "
                "value), its mean loss, its weights moved")
    evidence = ("exit_head",)

    def judge(self, value, seen, ctx):
        ev = seen["exit_head"]
        if value == 0:
            return "an exit head was trained" if ev["block"] or ev["steps"] else None
        want = max(1, round(value * ev["layers"]))
        if ev["exit_after_blocks"] != want:
            return f"the exit head read the output of block {ev['exit_after_blocks']}, expected {want} of {ev['layers']}"
        return None if ev["steps"] > 0 and ev["weights_moved"] else f"exit head not trained: {ev}"

    def report(self, value, seen, ctx):
        return seen["exit_head"]
