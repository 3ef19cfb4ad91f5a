"""A small training loop for CNNs on in-memory image tensors (AdamW, linear decay), written like
user code on a define-by-run trial (greenknobs.trial).

The dense loop starts from native values, as any training script would (``NATIVE_LR``,
``NATIVE_BATCH``, ``NATIVE_EPOCHS``), and hands its DataLoader, optimizer and epoch loop to the
trial: the batch-size, learning-rate and epochs knobs act on those objects, the precision knob on
the model's forward, the threads knob on the process -- this loop reads none of their settings.
Fine-tuning after pruning is the vision pipeline's own mechanism (``training.finetune_epochs``):
its loader goes to the trial too (the batch size acts on it), but its optimizer does not (its rate
is derived from the dense one's) and its passes are not epochs of ``trial.epochs``.

What the loop reports is what really happened: the recorded first forward pass (input resolution,
MACs, block widths), rows consumed per epoch, steps the optimizer took (a step pre-hook) and the
rate it took the first one with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from greenknobs.ml.vision.count import parameter_count, record_forward

# Where this loop starts before the knobs act (the knobs set the rate, the batch size and the epochs)
NATIVE_LR, NATIVE_BATCH, NATIVE_EPOCHS, WEIGHT_DECAY = 1e-3, 64, 1, 0.01
# on_step(per_epoch, epochs): after every optimizer step, with the shape of the loop that stepped
StepFn = Callable[[int, int], None]


class Passes(Protocol):
    """The epochs a loop runs: ``trial.epochs(n)`` (whose passes are the epochs knob's evidence) or a range."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[int]: ...


class ShuffledBatches(Sampler[list[int]]):
    """A seeded shuffle of ``n`` rows in batches of ``batch_size`` (the last may be smaller), a fresh
    permutation each pass. ``batch_size`` is an attribute the batch-size knob sets, as on torch's
    own BatchSampler; the generator pickles with its state (the phase store keeps loaders)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        return iter([order[s: s + self.batch_size] for s in range(0, self.n, self.batch_size)])

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


class TensorLoader(DataLoader):
    """A DataLoader over in-memory tensors that pickles as what it was built from -- its dataset and
    batch sampler (batch size, generator state) -- and nothing attached to it later: the phase store
    keeps the loaders a trial was handed, and the trial's watch on them (closures over the live
    trial) neither pickles nor belongs in a stored loader. Unpickled, it is unwatched."""

    def __init__(self, dataset: TensorDataset, batch_sampler: ShuffledBatches):
        super().__init__(dataset, batch_sampler=batch_sampler)

    def __reduce__(self) -> tuple[Any, ...]:
        return TensorLoader, (self.dataset, self.batch_sampler)


def loader(x: torch.Tensor, y: torch.Tensor, seed: int) -> TensorLoader:
    """A DataLoader over (x, y) at the native batch size, shuffled with ``seed``."""
    return TensorLoader(TensorDataset(x, y), ShuffledBatches(len(x), NATIVE_BATCH, seed))


@dataclass
class FitReport:
    epochs_completed: int = 0
    optimizer_steps: int = 0  # counted by the loop
    optimizer_steps_taken: int = 0  # counted by the optimizer's step pre-hook
    lr_first: float | None = None  # the rate of the first step (read by the pre-hook)
    examples_per_epoch: int = 0  # rows the first pass consumed
    logits_dtype: str | None = None
    first_forward: dict[str, Any] = field(default_factory=dict)
    final_loss: float | None = None


def fit(trial: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: str, seed: int,
        on_step: StepFn | None = None) -> tuple[FitReport, torch.optim.Optimizer]:
    """Dense training of ``model`` on (x, y): loader, optimizer and epochs handed to ``trial`` so
    the knobs act on them. Returns the report and the optimizer (fine-tuning derives its rate)."""
    data = trial.train_loader(loader(x, y, seed))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = trial.optimizer(torch.optim.AdamW(params, lr=NATIVE_LR, weight_decay=WEIGHT_DECAY))
    return run_epochs(model, data, optimizer, trial.epochs(NATIVE_EPOCHS), device, on_step), optimizer


def finetune(trial: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
             device: str, seed: int, on_step: StepFn | None = None) -> FitReport:
    """Fine-tune the pruned ``model`` for ``epochs`` passes at peak rate ``lr``. Its loader goes to
    the trial (batch size); its optimizer does not: its rate is not the learning-rate knob's."""
    if epochs <= 0 or len(x) == 0:
        return FitReport()
    data = trial.train_loader(loader(x, y, seed))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    return run_epochs(model, data, optimizer, range(epochs), device, on_step)


def peak_rate(optimizer: torch.optim.Optimizer) -> float:
    """The rate a schedule scales (``initial_lr``), else the group's rate: what the optimizer was set to."""
    group = optimizer.param_groups[0]
    return float(group.get("initial_lr", group["lr"]))


def run_epochs(model: nn.Module, data: DataLoader, optimizer: torch.optim.Optimizer, epochs: Passes,
               device: str, on_step: StepFn | None = None) -> FitReport:
    """Train for ``epochs`` passes over ``data``; the rate decays linearly to 0 over the planned
    steps (planned from the loader as the knobs left it). ``on_step`` runs after every optimizer
    step (the search's check for hopeless trials may raise there)."""
    rep = FitReport()
    per_epoch, n_epochs = len(data), len(epochs)
    total = max(per_epoch * n_epochs, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total))

    def before_step(opt, args, kwargs) -> None:
        rep.lr_first = float(opt.param_groups[0]["lr"]) if rep.lr_first is None else rep.lr_first
        rep.optimizer_steps_taken += 1

    handle = optimizer.register_step_pre_hook(before_step)
    model.train()
    loss = torch.zeros(())
    try:
        for _ in epochs:
            rows = 0
            for xb, yb in data:
                xb, yb = xb.to(device), yb.to(device)
                if not rep.first_forward:
                    with record_forward(model) as rec:
                        logits = model(xb)
                    rep.first_forward = {"parameters": parameter_count(model), **rec.summary()}
                    rep.logits_dtype = str(logits.dtype)
                else:
                    logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                rows += len(yb)
                rep.optimizer_steps += 1
                if on_step is not None:
                    on_step(per_epoch, n_epochs)
            rep.examples_per_epoch = rep.examples_per_epoch or rows
            rep.epochs_completed += 1
    finally:
        handle.remove()
    final = float(loss.detach())
    rep.final_loss = final if rep.optimizer_steps and math.isfinite(final) else None
    return rep


def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: str) -> list[int]:
    """Argmax predictions in batches (no recording: validation passes, calibration checks)."""
    model.eval()
    out: list[int] = []
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            out.extend(model(x[s: s + batch_size].to(device)).argmax(-1).tolist())
    return out
