"""A small training loop for CNNs on in-memory image tensors (AdamW, linear decay, optional autocast).

It reports what really happened -- steps the optimizer took and the rate it took the first one
with (a step pre-hook), the largest batch built, the dtype of the logits, the thread count as the
first forward ran, and a recorded first forward pass (input resolution, MACs, block widths) -- so
the knobs that set these can verify them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from greenknobs.ml.precision import autocast
from greenknobs.ml.vision.count import parameter_count, record_forward


@dataclass
class FitReport:
    epochs_completed: int = 0
    optimizer_steps: int = 0  # counted by the loop
    optimizer_steps_taken: int = 0  # counted by the optimizer's step pre-hook
    optimizer_class: str | None = None
    lr_first: float | None = None
    lr_last: float | None = None
    examples_per_epoch: int = 0
    batch_size_max: int = 0
    logits_dtype: str | None = None
    threads: int | None = None
    first_forward: dict[str, Any] = field(default_factory=dict)
    final_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def batch_plan(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch in batches of ``batch_size`` (the last may be smaller)."""
    order = torch.randperm(n, generator=generator)
    return [order[s: s + batch_size] for s in range(0, n, batch_size)]


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch_size: int,
        precision: str, device: str, seed: int, weight_decay: float = 0.01,
        on_step: Callable[[int, int], None] | None = None) -> FitReport:
    """Train ``model`` in place for ``epochs`` passes over (x, y); the rate decays linearly to 0.
    ``on_step(steps_done, steps_planned)`` runs after every optimizer step (the search's check for
    hopeless trials may raise there)."""
    rep = FitReport(examples_per_epoch=len(x) if epochs else 0)
    if epochs <= 0 or len(x) == 0:
        return rep
    generator = torch.Generator().manual_seed(seed)
    plans = [batch_plan(len(x), batch_size, generator) for _ in range(epochs)]
    total = sum(len(p) for p in plans)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / max(total, 1)))

    def before_step(opt, args, kwargs) -> None:
        rate = float(opt.param_groups[0]["lr"])
        rep.lr_first = rate if rep.lr_first is None else rep.lr_first
        rep.lr_last, rep.optimizer_class = rate, type(opt).__name__
        rep.optimizer_steps_taken += 1

    handle = optimizer.register_step_pre_hook(before_step)
    model.train()
    loss = torch.zeros(())
    try:
        for plan in plans:
            for idx in plan:
                xb, yb = x[idx].to(device), y[idx].to(device)
                rep.batch_size_max = max(rep.batch_size_max, len(idx))
                first = rep.optimizer_steps == 0
                if first:
                    rep.threads = torch.get_num_threads()
                    with record_forward(model) as rec, autocast(device, precision):
                        logits = model(xb)
                    rep.first_forward = {"parameters": parameter_count(model), **rec.summary()}
                    rep.logits_dtype = str(logits.dtype)
                else:
                    with autocast(device, precision):
                        logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                rep.optimizer_steps += 1
                if on_step is not None:
                    on_step(rep.optimizer_steps, total)
            rep.epochs_completed += 1
    finally:
        handle.remove()
    rep.final_loss = float(loss.detach()) if math.isfinite(float(loss.detach())) else None
    return rep


def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: str) -> list[int]:
    """Argmax predictions in batches (no recording: validation passes, calibration checks)."""
    model.eval()
    out: list[int] = []
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            out.extend(model(x[s: s + batch_size].to(device)).argmax(-1).tolist())
    return out
