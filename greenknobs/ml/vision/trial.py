"""A vision trial's training and serving on a define-by-run trial (greenknobs.trial). Any
image-classification pipeline built on ``SmallResNet`` can call these.

training:  train the dense model (``train.fit``: loader, optimizer and epochs handed to the trial,
           so the shared knobs act on them), prune it structurally -- channels per stage
           (``model.channel_prune_stage{k}`` by ``model.channel_criterion``) and residual blocks
           (``model.blocks_removed``) in ``model.prune_order`` -- then fine-tune the pruned model
           (``training.finetune_epochs``). Pruning needs trained weights (an untrained network's
           batch-norm scales are all 1), so it runs here, between the two; dense training, the
           pruning itself and fine-tuning each get a nested window on the trial's meter.
serving:   the trained model, or its static int8 version (``inference.static_int8``), predicts a
           DataLoader handed to ``trial.eval_loader`` (the inference batch size acts on it).

The pruning, fine-tuning and int8 settings are this pipeline's own mechanisms: read here
(``ctx.setting``), with evidence in ``ctx.observed``: ``dense_forward`` and ``served_forward``
(parameters, MACs and FLOPs per image, input shape, inner width of every block that ran,
convolutions that ran in int8), ``pruning`` (what was pruned, with its scores and the order of the
steps), ``finetune``, ``train_examples_per_epoch``. The shared knobs' evidence comes from their own
hooks on the objects handed over.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from greenknobs.ml.vision import count, prune, quant
from greenknobs.ml.vision.resnet import MAX_STAGES
from greenknobs.ml.vision.train import NATIVE_BATCH, finetune, fit, peak_rate

STAGE_SETTINGS = tuple(f"model.channel_prune_stage{s}" for s in range(1, MAX_STAGES + 1))
NATIVE_EVAL_BATCH = NATIVE_BATCH  # serving starts from this; inference.batch_size sets the handed loader's


class Progress:
    """The search's hopeless-trial check (``trial.check_progress``) after every optimizer step, at the
    fraction of all planned steps done -- dense and fine-tuning together, planned from the dense
    loader as the knobs left it. The scoring is measured here too, so the breakdown leaves it out
    as the phase does."""

    def __init__(self, trial: Any, model: torch.nn.Module, validate: Callable[[torch.nn.Module], float] | None,
                 finetune_epochs: int):
        self.trial, self.model, self.validate, self.finetune_epochs = trial, model, validate, finetune_epochs
        self.done, self.planned = 0, 0
        self.scored: list[Any] = []  # measurements of the scoring, charged to no step

    def __call__(self, per_epoch: int, epochs: int) -> None:
        self.planned = self.planned or per_epoch * (epochs + self.finetune_epochs)
        self.done += 1
        if self.validate is not None:
            self.trial.check_progress(min(1.0, self.done / max(self.planned, 1)), self._score)

    def _score(self) -> float:
        assert self.validate is not None
        with self.trial.meter.window("training.progress_score") as w:
            try:
                value = self.validate(self.model)
            finally:
                self.model.train()
        self.scored.append(w.measurement)
        return value


@contextlib.contextmanager
def _window(meter: Any, key: str, progress: Progress) -> Iterator[dict[str, Any]]:
    """A nested window on the trial's meter, less the progress checks scored inside it; yields the
    dict its energy is written into."""
    out: dict[str, Any] = {}
    before = len(progress.scored)
    with meter.window(key) as w:
        yield out
    m = w.measurement.without(progress.scored[before:])
    out.update({"energy_j": m.energy_j, "time_s": round(m.time_s, 4), "provenance": m.provenance, "meter": m.meter})


def channel_ratios(ctx) -> dict[int, float]:
    return {s: float(ctx.setting(name)) for s, name in enumerate(STAGE_SETTINGS, start=1)}


def pruning_requested(ctx) -> bool:
    return any(r > 0 for r in channel_ratios(ctx).values()) or ctx.setting("model.blocks_removed") > 0


def train_prune_finetune(trial: Any, x: torch.Tensor, y: torch.Tensor, calibration: tuple[torch.Tensor, torch.Tensor],
                         finetune_lr_scale: float = 1.0, validate: Callable[[torch.nn.Module], float] | None = None) -> None:
    """Train ``ctx.model`` on (x, y), prune it, fine-tune it; ``ctx.trained_model`` is the result.
    ``validate(model)`` scores validation quality (higher is better) for the search's hopeless-trial check."""
    ctx = trial.ctx
    model, device, record = ctx.model, ctx.runtime.device, ctx.observed.record
    ft_epochs = ctx.setting("training.finetune_epochs")
    progress = Progress(trial, model, validate, ft_epochs)
    energy: dict[str, Any] = {}
    with _window(trial.meter, "training.dense", progress) as energy["dense"]:
        dense, optimizer = fit(trial, model, x, y, device=device, seed=ctx.seed, on_step=progress)
    record("dense_forward", dense.first_forward)
    record("train_examples_per_epoch", dense.examples_per_epoch)

    report: dict[str, Any] = {"criterion": None, "channels": {}, "blocks": {"scores": {}, "removed": []}, "steps": []}
    if pruning_requested(ctx):
        cal_x, cal_y = calibration[0].to(device), calibration[1].to(device)
        with _window(trial.meter, "training.pruning", progress) as energy["pruning"]:
            report = prune.hybrid_prune(model, channel_ratios(ctx), ctx.setting("model.channel_criterion"),
                                        ctx.setting("model.blocks_removed"), ctx.setting("model.prune_order"), cal_x, cal_y)
        report["calibration_images"] = len(cal_x)
    record("pruning", report)

    # fine-tuning's peak rate: the dense optimizer's, as the learning-rate knob set it, scaled down
    lr = peak_rate(optimizer) * finetune_lr_scale
    with _window(trial.meter, "training.finetune", progress) as energy["finetune"]:
        ft = finetune(trial, model, x, y, epochs=ft_epochs, lr=lr, device=device, seed=ctx.seed + 1, on_step=progress)
    record("finetune", {"epochs_completed": ft.epochs_completed, "optimizer_steps": ft.optimizer_steps_taken,
                        "lr_first": ft.lr_first, "logits_dtype": ft.logits_dtype,
                        "parameters": ft.first_forward.get("parameters"),
                        "macs_per_image": ft.first_forward.get("macs_per_image"),
                        "block_widths": ft.first_forward.get("block_widths"),
                        "input_shape": ft.first_forward.get("input_shape")})
    model.eval()
    ctx.trained_model = ctx.model = model
    ctx.samples["training"] = dense.examples_per_epoch * dense.epochs_completed + ft.examples_per_epoch * ft.epochs_completed
    trial.detail("energy_breakdown", energy)
    trial.detail("epochs", {"dense": dense.epochs_completed, "finetune": ft.epochs_completed})
    trial.detail("optimizer_steps", dense.optimizer_steps + ft.optimizer_steps)
    trial.detail("final_loss", ft.final_loss if ft.epochs_completed else dense.final_loss)
    trial.detail("parameters", {"dense": dense.first_forward.get("parameters"), "trained": count.parameter_count(model)})
    if report["steps"]:
        trial.detail("pruning", {"steps": report["steps"], "before": report["before"], "removed_blocks": report["blocks"]["removed"],
                               "inner_widths": {b: (v["before"], v["after"]) for b, v in report["channels"].items()}})


def inference_model(trial: Any, model: torch.nn.Module, calibration: torch.Tensor) -> torch.nn.Module:
    """The model to serve: ``model`` itself, or its static int8 version (calibrated here, so the
    calibration's cost is counted where this runs). A new int8 model is watched by the trial, so
    the serving knobs' hooks see its forward passes."""
    ctx = trial.ctx
    if not ctx.setting("inference.static_int8"):
        return model
    ctx.observed.record("int8_engine", quant.engine())
    served = quant.quantize_static_int8(model, calibration)
    trial.watch(served)
    return served


def serve(trial: Any, model: torch.nn.Module, x: torch.Tensor, record: bool) -> list[int]:
    """Predict ``x`` through a DataLoader handed to ``trial.eval_loader`` (the inference batch size
    acts on it); ``record``: the first batch's forward pass is recorded as ``served_forward``."""
    ctx = trial.ctx
    device = "cpu" if ctx.setting("inference.static_int8") else ctx.runtime.device  # int8 kernels are CPU kernels
    data = trial.eval_loader(DataLoader(x, batch_size=NATIVE_EVAL_BATCH))
    # kept alive for the trial: the trial tells objects its knobs acted on apart by id(), and a freed
    # loader's id, reused by the next repeat's, would read as "acted already"
    ctx.extras.setdefault("eval_loaders", []).append(data)
    model.eval()
    preds: list[int] = []
    with torch.inference_mode():
        for xb in data:
            xb = xb.to(device)
            if record:
                with count.record_forward(model) as rec:
                    logits = model(xb)
                # parameters of the float model that was served or quantised (int8 keeps the count)
                ctx.observed.record("served_forward", {"parameters": count.parameter_count(ctx.trained_model or model),
                                                       **rec.summary()})
                record = False
            else:
                logits = model(xb)
            preds.extend(logits.argmax(-1).tolist())
    return preds
