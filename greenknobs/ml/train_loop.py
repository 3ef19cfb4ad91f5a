"""The training loop the built-in language pipelines share (text classification, causal LM).

It is written like user code: it hands its DataLoader, optimizer and epochs to the trial, and the
knobs that act on those (batch size, learning rate, epochs, precision, checkpointing, freezing,
compile, threads) act on them and watch them as they would in any script. What the loop reads
itself are its own mechanisms: gradient accumulation, the optimizer class, early stopping,
distillation, the exit head, DataLoader workers -- their evidence goes to ``ctx.observed``.
A pipeline supplies a ``Task`` (how to batch, what the loss is, how to score validation).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from greenknobs.ml import bnb, distill
from greenknobs.ml.precision import autocast


class Task(Protocol):
    def collate_fn(self, ctx) -> Callable[[list[dict[str, Any]]], dict[str, Any]]: ...
    def batch_plan(self, ctx, batch_size: int, rng: random.Random) -> list[list[int]]: ...
    def forward(self, ctx, model: nn.Module, batch: dict[str, Any], teacher: bool = False) -> tuple[torch.Tensor, torch.Tensor]: ...
    def observe(self, ctx, batch: dict[str, Any]) -> None: ...  # record task evidence (lengths, padding)
    def kd_loss(self, student: torch.Tensor, teacher: torch.Tensor, batch: dict[str, Any], t: float,
                facts: dict[str, Any]) -> torch.Tensor: ...  # greenknobs.ml.distill: records what it computed with
    def validate(self, ctx, model: nn.Module) -> float: ...  # validation quality, higher is better (the search's check)
    def stop_score(self, ctx, model: nn.Module) -> float: ...  # early stopping's score on rows carved from training
    def extra_trainable(self, ctx) -> list[nn.Module]: ...


def worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return info.id if info is not None else -1


# -- training ----------------------------------------------------------------------------------
def make_optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "adafactor":
        return torch.optim.Adafactor(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adamw_8bit":
        return bnb.adamw_8bit(params, lr)
    raise ValueError(f"unknown optimizer {name!r}")


class PlannedBatches(torch.utils.data.Sampler):
    """Batches of row indices, planned afresh each pass by the task (shuffled, or length-bucketed)
    at ``batch_size`` -- an attribute the batch-size knob sets, like torch's own BatchSampler's."""

    def __init__(self, task: Task, ctx, batch_size: int, seed: int):
        self.task, self.ctx, self.batch_size = task, ctx, batch_size
        self.rng = random.Random(seed)

    def __iter__(self):
        return iter(self.task.batch_plan(self.ctx, self.batch_size, self.rng))

    def __len__(self) -> int:
        return math.ceil(len(self.ctx.train) / self.batch_size)


class StepCounter:
    """Optimizer steps and the optimizer's class, read when it steps (a step pre-hook)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.steps = 0
        self.cls: str | None = None
        self._handle = optimizer.register_step_pre_hook(self._on_step)

    def _on_step(self, opt, args, kwargs) -> None:
        self.steps, self.cls = self.steps + 1, type(opt).__name__

    def close(self) -> None:
        self._handle.remove()


def record_power_limits(ctx) -> None:
    """The GPU power limits in force while training runs (read from NVML, not from the setting)."""
    if ctx.setting("system.gpu_power_limit") != 1.0:
        from greenknobs.devices import power

        ctx.observed.record("gpu_power_limits_in_training_w", power.read_limits_w())


# What the loop starts from before the knobs act, as any training script would: the knobs set the
# learning rate on the optimizer, the batch size on the loader, the epochs through trial.epochs.
NATIVE_LR, NATIVE_BATCH = 5e-5, 16


def train(ctx, task: Task) -> None:
    """Fine-tune ``ctx.model`` on ``ctx.train``. The loop hands its loader, optimizer and epochs to
    the trial like user code does; the settings it reads itself (accumulation, optimizer class,
    early stopping, distillation, exit head, workers) are this loop's own mechanisms."""
    trial = ctx.trial
    model, device = ctx.model, ctx.runtime.device
    accumulate, precision = ctx.setting("training.grad_accumulation"), ctx.setting("training.precision")
    patience = ctx.setting("training.early_stopping_patience")
    kd_lambda, kd_t = ctx.setting("training.kd_lambda"), ctx.setting("training.kd_temperature")
    record = ctx.observed.record

    extra = task.extra_trainable(ctx)
    params = [p for p in model.parameters() if p.requires_grad] + [p for m in extra for p in m.parameters()]
    optimizer = trial.optimizer(make_optimizer(ctx.setting("training.optimizer"), params, NATIVE_LR))
    stepped = StepCounter(optimizer)
    record("total_parameters", sum(p.numel() for p in model.parameters()) + sum(p.numel() for m in extra for p in m.parameters()))
    record_power_limits(ctx)

    teacher = None
    if kd_lambda > 0:  # loaded inside the training window: its cost is training energy
        teacher = ctx.teacher_loader().to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    kd: dict[str, Any] = {"teacher_forwards": 0, "kd_loss_sum": 0.0, "temperatures_seen": [], "lambdas_seen": [],
                          "teacher_parameters": sum(p.numel() for p in teacher.parameters()) if teacher else 0}

    sampler = PlannedBatches(task, ctx, NATIVE_BATCH, ctx.seed)
    loader = trial.train_loader(torch.utils.data.DataLoader(
        ctx.train, batch_sampler=sampler, collate_fn=task.collate_fn(ctx), num_workers=ctx.setting("system.dataloader_workers")))
    epochs = trial.epochs(1)
    micro_per_epoch = len(loader)
    total_micro = max(1, micro_per_epoch * len(epochs))
    total_steps = math.ceil(micro_per_epoch / accumulate) * len(epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / max(total_steps, 1)))
    scaler = torch.amp.GradScaler(device) if precision == "fp16" else None
    eval_every = max(1, math.ceil(micro_per_epoch / 2))  # early stopping: two validation passes per epoch
    history: list[float] = []
    best_state, stopped = None, False
    workers_seen: set[int] = set()
    steps = micro = 0
    loss = torch.zeros(())
    model.train()
    for epoch in epochs:
        seen = 0
        for i, batch in enumerate(loader):
            workers_seen.add(int(batch.pop("worker")))
            task.observe(ctx, batch)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            loss, logits = task.forward(ctx, model, batch)
            if teacher is not None:
                with torch.no_grad(), autocast(device, precision):
                    _, t_logits = task.forward(ctx, teacher, batch, teacher=True)
                facts: dict[str, Any] = {}
                distil = task.kd_loss(logits, t_logits, batch, kd_t, facts)
                loss = distill.mix(loss, distil, kd_lambda, facts)
                kd["teacher_forwards"] += 1
                kd["kd_loss_sum"] += float(distil.detach())
                kd["temperatures_seen"].append(facts["temperature_seen"])
                if "lambda_seen" in facts:
                    kd["lambdas_seen"].append(facts["lambda_seen"])
            (scaler.scale(loss / accumulate) if scaler else loss / accumulate).backward()
            micro += 1
            seen += batch["rows"]
            # the search may stop a hopeless trial here (HopelessTrial); the check's scoring is not training energy
            trial.check_progress(micro / total_micro, lambda: _validate(task, ctx, model))
            if micro % accumulate == 0 or i == micro_per_epoch - 1:
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                steps += 1
            if patience and ((i + 1) % eval_every == 0 or i == micro_per_epoch - 1):
                history.append(task.stop_score(ctx, model))
                model.train()
                if history[-1] >= max(history):
                    best_state = _snapshot(model, extra)
                elif len(history) - 1 - history.index(max(history)) >= patience:
                    stopped = True
                    break
        if not stopped or epoch == 0:  # an epoch cut short by early stopping is not a full epoch's count
            record("train_examples_per_epoch", seen if not stopped else len(ctx.train))
        record("epochs_completed", epoch + 1)
        if stopped:
            break
    stepped.close()
    if best_state is not None and history[-1] < max(history):
        _restore(model, extra, best_state)  # early stopping keeps the best weights it saw

    record("optimizer_class", stepped.cls)  # the optimizer that actually stepped
    record("micro_batches", micro)
    record("micro_batches_per_epoch", micro_per_epoch)
    record("optimizer_steps", steps)
    record("validation_history", history)
    record("early_stopped", stopped)
    record("batch_workers_seen", sorted(workers_seen))
    kd["kd_loss_mean"] = kd.pop("kd_loss_sum") / max(kd["teacher_forwards"], 1)
    temps, lams = kd.pop("temperatures_seen"), kd.pop("lambdas_seen")
    kd["temperature_seen"] = round(sum(temps) / len(temps), 4) if temps else None
    kd["lambda_seen"] = round(sum(lams) / len(lams), 4) if lams else None
    record("distillation", kd)
    ctx.trained_model = model
    ctx.detail("optimizer_steps", steps)
    ctx.detail("final_loss", float(loss.detach()))
    ctx.detail("trainable_parameters", sum(p.numel() for p in params))


def _validate(task: Task, ctx, model: nn.Module) -> float:
    """Validation quality now (higher is better), leaving the model in training mode."""
    try:
        return task.validate(ctx, model)
    finally:
        model.train()


def _snapshot(model: nn.Module, extra: list[nn.Module]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in (model, *extra)]


def _restore(model: nn.Module, extra: list[nn.Module], state: list[dict[str, torch.Tensor]]) -> None:
    for m, s in zip((model, *extra), state):
        m.load_state_dict(s)
