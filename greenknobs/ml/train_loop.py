"""What the built-in pipelines share: model preparation, the training loop, inference helpers.

This is where the training- and system-phase knob settings are *read*, so every knob acts in one
place for every pipeline. A pipeline supplies a ``Task`` (how to batch, what the loss is, how to
score validation); the loop records evidence (``ctx.observed``) that the knobs' ``verify`` reads.

The first micro-batch always runs uncompiled with probes attached (fused-attention calls, top-block
forward calls); later micro-batches use the compiled model when ``system.compile`` is on.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from greenknobs.errors import KnobError
from greenknobs.ml import bnb, distill, layers, lora, probes
from greenknobs.ml.compile import compile_model
from greenknobs.ml.precision import autocast


class Task(Protocol):
    def collate_fn(self, ctx) -> Callable[[list[dict[str, Any]]], dict[str, Any]]: ...
    def batch_plan(self, ctx, batch_size: int, rng: random.Random) -> list[list[int]]: ...
    def forward(self, ctx, model: nn.Module, batch: dict[str, Any], teacher: bool = False) -> tuple[torch.Tensor, torch.Tensor]: ...
    def observe(self, ctx, batch: dict[str, Any]) -> None: ...  # record task evidence (lengths, padding)
    def kd_loss(self, student: torch.Tensor, teacher: torch.Tensor, batch: dict[str, Any], t: float,
                facts: dict[str, Any]) -> torch.Tensor: ...  # greenknobs.ml.distill: records what it computed with
    def validate(self, ctx, model: nn.Module) -> float: ...  # higher is better
    def extra_trainable(self, ctx) -> list[nn.Module]: ...


def worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return info.id if info is not None else -1


# -- model phase -------------------------------------------------------------------------------
def prepare_model(ctx, trainable_heads: list[str]) -> None:
    """After every model knob's apply: quantise (bitsandbytes), then attach LoRA — in that order,
    because QLoRA adapters sit on top of the quantised layers and pruning must come first."""
    mode = ctx.setting("model.quantized_load")
    ctx.observed.record("quantized_linears", bnb.quantize_blocks(ctx.model, mode, ctx.runtime.device) if mode != "none" else 0)
    rank = ctx.setting("model.lora_rank")
    if rank:
        targets = ctx.setting("model.lora_targets")
        # the model's structure, not the setting: verify re-selects the targets from these names
        ctx.observed.record("lora_candidate_linears", lora.block_linears(ctx.model))
        ctx.model = lora.add_lora(ctx.model, rank, ctx.setting("model.lora_alpha"), targets, trainable_heads)


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


def freeze_bottom(model: nn.Module, k: int) -> list[nn.Module]:
    """Freeze the input embeddings and the first ``k`` blocks; return the frozen modules."""
    if k == 0:
        return []
    _, _, stack = layers.find_layer_stack(model)
    if k >= len(stack):
        raise KnobError(f"training.freeze_layers={k} would freeze all {len(stack)} blocks")
    frozen = [model.get_input_embeddings(), *list(stack)[:k]]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


class StepRecorder:
    """Reads what the optimizer stepped with, at the moment it steps (a step pre-hook)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.steps = 0
        self.lr_first: float | None = None
        self.lr_last: float | None = None
        self.cls: str | None = None
        self._handle = optimizer.register_step_pre_hook(self._on_step)

    def _on_step(self, opt, args, kwargs) -> None:
        lr = float(opt.param_groups[0]["lr"])
        self.lr_first = lr if self.lr_first is None else self.lr_first
        self.lr_last, self.cls, self.steps = lr, type(opt).__name__, self.steps + 1

    def close(self) -> None:
        self._handle.remove()


def record_power_limits(ctx) -> None:
    """The GPU power limits in force while training runs (read from NVML, not from the setting)."""
    if ctx.setting("system.gpu_power_limit") != 1.0:
        from greenknobs.devices import power

        ctx.observed.record("gpu_power_limits_in_training_w", power.read_limits_w())


def train(ctx, task: Task) -> None:
    model, device = ctx.model, ctx.runtime.device
    epochs, batch_size = ctx.setting("training.epochs"), ctx.setting("system.train_batch_size")
    accumulate, precision = ctx.setting("training.grad_accumulation"), ctx.setting("training.precision")
    patience = ctx.setting("training.early_stopping_patience")
    kd_lambda, kd_t = ctx.setting("training.kd_lambda"), ctx.setting("training.kd_temperature")
    record = ctx.observed.record

    frozen = freeze_bottom(model, ctx.setting("training.freeze_layers"))
    frozen_before = [probes.checksum(m) for m in frozen]
    if ctx.setting("training.gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    extra = task.extra_trainable(ctx)
    params = [p for p in model.parameters() if p.requires_grad] + [p for m in extra for p in m.parameters()]
    optimizer = make_optimizer(ctx.setting("training.optimizer"), params, ctx.setting("training.learning_rate"))
    stepped = StepRecorder(optimizer)
    record("trainable_parameters", sum(p.numel() for p in params))
    record("total_parameters", sum(p.numel() for p in model.parameters()) + sum(p.numel() for m in extra for p in m.parameters()))
    record("train_weight_dtype", probes.floating_dtype(model))
    record_power_limits(ctx)

    teacher = None
    if kd_lambda > 0:  # loaded inside the training window: its cost is training energy
        teacher = ctx.teacher_loader().to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    kd: dict[str, Any] = {"teacher_forwards": 0, "kd_loss_sum": 0.0, "temperatures_seen": [], "lambdas_seen": [],
                          "teacher_parameters": sum(p.numel() for p in teacher.parameters()) if teacher else 0}

    forward_model, compile_stats = model, {"graphs": 0, "calls": 0, "compiler": None}
    if ctx.setting("system.compile") != "off":
        forward_model, compile_stats = compile_model(model, ctx.setting("system.compile"))

    rng = random.Random(ctx.seed)
    plans = [task.batch_plan(ctx, batch_size, rng) for _ in range(epochs)]
    micro_per_epoch = len(plans[0])
    total_micro = max(1, sum(len(p) for p in plans))
    total_steps = sum(math.ceil(len(p) / accumulate) for p in plans)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / max(total_steps, 1)))
    scaler = torch.amp.GradScaler(device) if precision == "fp16" else None
    eval_every = max(1, math.ceil(micro_per_epoch / 2))  # early stopping: two validation passes per epoch
    history: list[float] = []
    best_state, stopped = None, False
    workers_seen: set[int] = set()
    steps = micro = rows_total = 0
    loss = torch.zeros(())
    model.train()
    for epoch in range(epochs):
        loader = torch.utils.data.DataLoader(ctx.train, batch_sampler=plans[epoch], collate_fn=task.collate_fn(ctx),
                                             num_workers=ctx.setting("system.dataloader_workers"))
        seen = 0
        for i, batch in enumerate(loader):
            workers_seen.add(int(batch.pop("worker")))
            ctx.observed.record_max("train_batch_size_max", batch["rows"])
            task.observe(ctx, batch)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            first = micro == 0
            with contextlib.ExitStack() as probes_on:
                if first:
                    sdpa = probes_on.enter_context(probes.count_sdpa_calls())
                    top = probes_on.enter_context(count_top_block(model))
                    record("threads_in_training", torch.get_num_threads())  # as the first forward runs
                    record("interop_threads_in_training", torch.get_num_interop_threads())
                with autocast(device, precision):
                    loss, logits = task.forward(ctx, model if first else forward_model, batch)
                    if teacher is not None:
                        with torch.no_grad():
                            _, t_logits = task.forward(ctx, teacher, batch, teacher=True)
                        facts: dict[str, Any] = {}
                        distil = task.kd_loss(logits, t_logits, batch, kd_t, facts)
                        loss = distill.mix(loss, distil, kd_lambda, facts)
                        kd["teacher_forwards"] += 1
                        kd["kd_loss_sum"] += float(distil.detach())
                        kd["temperatures_seen"].append(facts["temperature_seen"])
                        if "lambda_seen" in facts:
                            kd["lambdas_seen"].append(facts["lambda_seen"])
                if first:
                    record("train_logits_dtype", str(logits.dtype))
                (scaler.scale(loss / accumulate) if scaler else loss / accumulate).backward()
                if first:
                    record("sdpa_calls_first_forward", sdpa[0])
                    record("blocks_first_forward", layers.layer_count(model))
                    record("top_block_calls_first_step", top[0])
            micro += 1
            seen += batch["rows"]
            rows_total += batch["rows"]
            if ctx.progress_check is not None:  # the search may stop a hopeless trial here (HopelessTrial)
                ctx.progress_check(micro / total_micro, lambda: _validate(task, ctx, model))
            if micro % accumulate == 0 or i == len(plans[epoch]) - 1:
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                steps += 1
            if patience and ((i + 1) % eval_every == 0 or i == len(plans[epoch]) - 1):
                history.append(task.validate(ctx, model))
                model.train()
                if history[-1] >= max(history):
                    best_state = _snapshot(model, extra)
                elif len(history) - 1 - history.index(max(history)) >= patience:
                    stopped = True
                    break
        record("epochs_completed", epoch + 1)
        if not stopped or epoch == 0:  # an epoch cut short by early stopping is not a full epoch's count
            record("train_examples_per_epoch", seen if not stopped else sum(len(b) for b in plans[0]))
        if stopped:
            break
    stepped.close()
    if best_state is not None and history[-1] < max(history):
        _restore(model, extra, best_state)  # early stopping keeps the best weights it saw
    if ctx.setting("training.gradient_checkpointing"):
        model.gradient_checkpointing_disable()

    record("optimizer_class", stepped.cls)  # the optimizer that actually stepped
    record("optimizer_lr", stepped.lr_first)  # the peak rate it stepped with (the schedule decays from it)
    record("optimizer_lr_last", stepped.lr_last)
    record("trained_weight_dtype", probes.floating_dtype(model))
    record("micro_batches", micro)
    record("micro_batches_per_epoch", micro_per_epoch)
    record("optimizer_steps", steps)
    record("optimizer_steps_taken", stepped.steps)
    record("validation_history", history)
    record("early_stopped", stopped)
    record("batch_workers_seen", sorted(workers_seen))
    record("train_compile", dict(compile_stats))
    record("freeze", {"frozen_blocks": max(0, len(frozen) - 1),
                      "unchanged": [probes.checksum(m) for m in frozen] == frozen_before})
    kd["kd_loss_mean"] = kd.pop("kd_loss_sum") / max(kd["teacher_forwards"], 1)
    temps, lams = kd.pop("temperatures_seen"), kd.pop("lambdas_seen")
    kd["temperature_seen"] = round(sum(temps) / len(temps), 4) if temps else None
    kd["lambda_seen"] = round(sum(lams) / len(lams), 4) if lams else None
    record("distillation", kd)
    record("lora", lora.lora_evidence(model))
    ctx.trained_model = model
    ctx.samples["training"] = rows_total
    ctx.detail("optimizer_steps", steps)
    ctx.detail("final_loss", float(loss.detach()))
    ctx.detail("trainable_parameters", ctx.observed.get("trainable_parameters"))


@contextlib.contextmanager
def count_top_block(model: nn.Module):
    """Count forward entries of the top block's first sub-module: transformers checkpoints a block's
    ``forward`` (not ``__call__``), so the recomputation is visible one level down."""
    _, _, stack = layers.find_layer_stack(model)
    top = stack[len(stack) - 1]
    with probes.count_forward_calls(next(top.children(), top)) as counter:
        yield counter


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


# -- inference ---------------------------------------------------------------------------------
def inference_model(ctx, model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """The model to serve inference with: compiled when ``inference.compile`` asks for it."""
    if ctx.setting("inference.compile") != "off":
        return compile_model(model, ctx.setting("inference.compile"))
    return model, {"graphs": 0, "calls": 0, "compiler": None}
