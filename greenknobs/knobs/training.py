"""Training-phase knobs: how long, how fast, in which precision and with which extras the model learns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from greenknobs.errors import IncompatibleKnobs, KnobNotApplied
from greenknobs.knobs import watching
from greenknobs.knobs.base import ObjectKnob, Requires, SettingKnob, Space, register
from greenknobs.ml import instruments

# CPU autocast supports bf16 only, and fp16 matmuls on a CPU are slow and unstable
FP16_NEEDS_CUDA: dict[str, tuple[str, ...]] = {"fp16": ("cuda",)}


@dataclass
class EpochsEvidence:
    passes: int = 0  # complete passes over the training DataLoader during training (counted by the loader)
    trainer_epochs: int = 0  # epochs a Hugging Face Trainer ended (its on_epoch_end)
    optimizer_steps: int | None = None


@register
class Epochs(ObjectKnob):
    name = "training.epochs"
    default = 1
    space = Space(low=1, high=3, integer=True)
    bounds = (1, None)
    example = 2
    description = "Passes over the training data (``for epoch in trial.epochs(n)``, or TrainingArguments.num_train_epochs)."
    verifies = "complete passes the training loop made over its DataLoader (or the epochs a Trainer ended)"
    acts_on = ("epochs", "training_args")
    watches = ("train_loader",)
    needs = (("epochs", "train_loader"), ("training_args", "trainer"))
    needs_hint = "for epoch in trial.epochs(n) over a loader handed to trial.train_loader(), or trial.training_args(args)"
    evidence_type = EpochsEvidence
    judge_in_smoke = False  # a smoke run cuts training short

    def handed(self, kind, obj, value, trial):
        ev = trial.evidence(self)
        if kind == "training_args" and trial.may_act(self, kind, obj):
            obj.num_train_epochs = value
        elif kind == "epochs":
            trial.may_act(self, kind, obj)  # the mechanism is trial.epochs' range over this knob's value
        if watching.once(trial, self):
            def passed(role, batches):
                if role == "train" and trial.current_phase == "training" and trial.in_epoch_loop:
                    ev.passes += 1

            def ended(epoch):
                ev.trainer_epochs += 1

            trial.on("pass_end", passed)
            trial.on("epoch_end", ended)
        return None

    def judge(self, value, ev, ctx):
        done = ev.trainer_epochs if ev.trainer_epochs else ev.passes
        stopped = ctx.observed.get("early_stopped")
        if done == value or (stopped and 0 < done <= value):
            return None
        return f"{done} epochs ran"


@dataclass
class RateEvidence:
    steps: int = 0
    first: float | None = None  # the rate of the first step (0 under a warm-up)
    peak: float | None = None
    last: float | None = None
    bases: list[float] = field(default_factory=list)  # the rate the schedule scales, read at each step (distinct)
    scheduled: bool = False  # a scheduler drove the rate (``initial_lr`` in the optimizer's groups)


@register
class LearningRate(ObjectKnob):
    name = "training.learning_rate"
    default = 5e-5
    space = Space(low=1e-5, high=5e-4, log=True)
    bounds = (1e-12, 0.999999)
    example = 3e-4
    description = ("Peak learning rate. Set on the optimizer handed to trial.optimizer() (every parameter group scaled "
                   "so the first group's rate is this), or on TrainingArguments.learning_rate; a scheduler scales it.")
    verifies = ("the rate the optimizer stepped with at every step (a step pre-hook) and the base its schedule scaled; "
                "never above the value, the base equal to it, and that it stepped")
    acts_on = ("optimizer", "training_args")
    needs = (("optimizer",), ("training_args", "trainer"))
    needs_hint = ("the optimizer, before its scheduler: trial.optimizer(opt); or a Trainer's arguments: "
                  "trial.training_args(args) and trial.trainer(trainer)")
    needed_in = "training"
    evidence_type = RateEvidence

    def handed(self, kind, obj, value, trial):
        if kind == "training_args":
            if trial.may_act(self, kind, obj):
                obj.learning_rate = value
            return None
        groups = instruments.inner_optimizer(obj).param_groups
        if trial.may_act(self, kind, obj):
            if any("initial_lr" in g for g in groups):
                raise KnobNotApplied(f"{self.name}: the optimizer already has a learning-rate scheduler; hand it to "
                                     "trial.optimizer() before creating the scheduler, so the schedule scales this rate")
            scale = value / groups[0]["lr"]
            for g in groups:
                g["lr"] *= scale
        ev = trial.evidence(self)
        scratch = trial.scratch(self)
        if scratch.get("watched") is not obj:
            scratch["watched"] = obj

            def stepped(opt) -> None:
                group = opt.param_groups[0]
                lr = float(group["lr"])
                base = float(group.get("initial_lr", lr))
                ev.steps += 1
                ev.first = lr if ev.first is None else ev.first
                ev.peak = lr if ev.peak is None else max(ev.peak, lr)
                ev.last = lr
                ev.scheduled = ev.scheduled or "initial_lr" in group
                if not any(math.isclose(base, b, rel_tol=1e-9) for b in ev.bases):
                    ev.bases.append(base)

            trial.keep(instruments.on_step(obj, stepped))
        return None

    def judge(self, value, ev, ctx):
        if not ev.steps:
            return "the optimizer never stepped"
        if not all(math.isclose(b, value, rel_tol=1e-6) for b in ev.bases):
            return f"the schedule's base rate was {ev.bases}"
        if ev.peak > value * (1 + 1e-6) or ev.peak <= 0:
            return f"stepped at up to {ev.peak}"
        if not ev.scheduled and not math.isclose(ev.peak, value, rel_tol=1e-6):
            return f"stepped at {ev.peak} with no schedule"
        return None


@dataclass
class PrecisionEvidence:
    training_output: str | None = None  # dtypes the Linear layers computed in, in the first training forward
    weights: str | None = None
    via: str | None = None  # "training_args" (the Trainer's autocast) or "model" (an autocast around its forward)


@register
class Precision(ObjectKnob):
    name = "training.precision"
    default = "fp32"
    space = Space(choices=("fp32", "bf16", "fp16"))
    value_devices = FP16_NEEDS_CUDA
    example = "bf16"
    description = ("Mixed precision for training: autocast to bf16 (CPU or GPU) or fp16 (GPU). Through TrainingArguments "
                   "(bf16/fp16) for a Trainer, else an autocast around the handed-over model's forward while training runs.")
    verifies = "dtype of the Linear layers' outputs in a real training forward pass (forward hooks)"
    acts_on = ("training_args", "model")
    needs = (("model",),)
    needs_hint = "the model: trial.model(model)"
    needed_in = "training"
    evidence_type = PrecisionEvidence

    def handed(self, kind, obj, value, trial):
        if kind == "training_args":
            if value != "fp32" and trial.may_act(self, kind, obj):
                setattr(obj, value, True)
                if hasattr(obj, "mixed_precision"):  # what the Trainer builds its accelerator from (set at init)
                    obj.mixed_precision = value
                trial.evidence(self).via = "training_args"
            return None
        ev = trial.evidence(self)
        if watching.once(trial, self):
            def start(phase, module, args, kwargs):
                ev.weights = instruments.floating_dtype(module)
                return instruments.linear_output_dtypes(module)

            def finish(phase, state, module, output):
                dtypes, handles = state
                for h in handles:
                    h.remove()
                # the Linear layers' own outputs: a wrapper may cast the model's output back to fp32
                ev.training_output = "+".join(sorted(dtypes)) or instruments.output_dtype(output)

            watching.on_first_forward(trial, ("training",), start, finish)
        return None

    def phase_started(self, phase, value, trial):
        model = trial.handed("model")
        if phase == "training" and value != "fp32" and model is not None and trial.may_act(self, "model", model):
            trial.scratch(self)["restore"] = instruments.autocast_forward(model, trial.runtime.device, value)
            trial.evidence(self).via = "model"

    def phase_ended(self, phase, value, trial):
        restore = trial.scratch(self).pop("restore", None)
        if phase == "training" and restore is not None:
            restore()

    def judge(self, value, ev, ctx):
        if ev.training_output is None:
            return "no training forward pass was watched"
        want = {"bf16": "torch.bfloat16", "fp16": "torch.float16"}.get(value)
        if want is None:  # fp32: no autocast, the output keeps the weights' dtype (model.weight_dtype may store bf16)
            stored = ev.weights if ev.weights in ("torch.bfloat16", "torch.float16") else "torch.float32"
            return None if ev.training_output == stored else f"training output was {ev.training_output} without autocast"
        return None if ev.training_output == want else f"training output was {ev.training_output}, expected {want}"


@dataclass
class CheckpointEvidence:
    top_block_calls: int | None = None  # forward entries of the top block in the first training step (2: recomputed)
    via: str | None = None


@register
class GradientCheckpointing(ObjectKnob):
    name = "training.gradient_checkpointing"
    default = False
    space = Space(choices=(False, True))
    example = True
    description = "Recompute block activations in the backward pass instead of storing them (less memory, more compute)."
    verifies = "forward entries of the top block in the first training step: 2 when recomputed, 1 otherwise"
    acts_on = ("training_args", "model")
    needs = (("model",),)
    needs_hint = "the model: trial.model(model)"
    needed_in = "training"
    evidence_type = CheckpointEvidence

    def handed(self, kind, obj, value, trial):
        if kind == "training_args":
            if value and trial.may_act(self, kind, obj):
                obj.gradient_checkpointing = True
                obj.gradient_checkpointing_kwargs = {"use_reentrant": False}
                trial.evidence(self).via = "training_args"
            return None
        ev = trial.evidence(self)
        if watching.once(trial, self):
            state: dict[str, Any] = {}

            def start(phase, module, args, kwargs):
                counts, handles = instruments.count_calls([instruments.top_block_entry(module)])
                state.update(counts=counts, handles=handles)

            def stepped(_opt=None):
                if "handles" in state and ev.top_block_calls is None:
                    for h in state.pop("handles"):
                        h.remove()
                    ev.top_block_calls = state["counts"][0]

            def next_forward(phase, training, first, module, args, kwargs):
                if phase == "training" and training and not first:  # accumulation: the step's backward is done
                    stepped()

            watching.on_first_forward(trial, ("training",), start, lambda *_: None)
            trial.on("forward", next_forward)
            trial.on("step", stepped)
            trial.on("phase_end", lambda phase: stepped() if phase == "training" else None)
        return None

    def phase_started(self, phase, value, trial):
        model = trial.handed("model")
        if phase == "training" and value and model is not None and trial.may_act(self, "model", model):
            trial.scratch(self)["restore"] = instruments.checkpoint_blocks(model)
            trial.evidence(self).via = "model"

    def phase_ended(self, phase, value, trial):
        restore = trial.scratch(self).pop("restore", None)
        if phase == "training" and restore is not None:
            restore()

    def judge(self, value, ev, ctx):
        calls = ev.top_block_calls
        if calls is None:
            return "no training step was watched"
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


@dataclass
class FreezeEvidence:
    blocks: int | None = None
    unchanged: list[bool] | None = None  # per block, bottom first: weights identical before and after training
    trainable_after_freeze: int | None = None


@register
class FreezeLayers(ObjectKnob):
    name = "training.freeze_layers"
    default = 0
    space = Space(choices=(0, 1, 2, 3))
    bounds = (0, None)
    example = 2
    description = "Freeze the embeddings and the bottom k blocks (no gradients, no optimizer state for them)."
    verifies = "which blocks training left unchanged (per-block checksums before and after): exactly the bottom k"
    acts_on = ("model",)
    needs = (("model",),)
    needs_hint = "the model: trial.model(model)"
    needed_in = "training"
    evidence_type = FreezeEvidence

    def phase_started(self, phase, value, trial):
        model = trial.handed("model")
        if phase != "training" or model is None:
            return
        if value and trial.may_act(self, "model", model):
            instruments.freeze_bottom(model, value)
        trial.scratch(self)["before"] = instruments.block_checksums(model)
        trial.evidence(self).trainable_after_freeze = instruments.trainable_count(model)

    def phase_ended(self, phase, value, trial):
        before = trial.scratch(self).pop("before", None)
        if phase == "training" and before is not None:
            after = instruments.block_checksums(trial.handed("model"))
            ev = trial.evidence(self)
            ev.blocks, ev.unchanged = len(after), [a == b for a, b in zip(before, after)]

    def judge(self, value, ev, ctx):
        if ev.unchanged is None:
            return "no training phase was watched"
        frozen = next((i for i, same in enumerate(ev.unchanged) if not same), len(ev.unchanged))
        if value and frozen != value:
            return f"training left the bottom {frozen} blocks unchanged, expected {value}"
        if not value and all(ev.unchanged):
            return "training changed no block"
        return None

    def report(self, value, ev, ctx):
        return {"frozen_blocks": next((i for i, s in enumerate(ev.unchanged or []) if not s), len(ev.unchanged or [])),
                "blocks": ev.blocks, "trainable_parameters": ev.trainable_after_freeze}


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
    requires = Requires(('training.kd_lambda',), lambda v: v["training.kd_lambda"] > 0, 'training.kd_lambda > 0', True)
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
