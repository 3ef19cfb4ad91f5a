"""A vision trial's training and inference, with the settings the knobs chose and the evidence
their ``verify`` reads. Any image-classification pipeline built on ``SmallResNet`` can call these.

training:  train the dense model (``training.epochs``), prune it structurally -- channels per stage
           (``model.channel_prune_stage{k}`` by ``model.channel_criterion``) and residual blocks
           (``model.blocks_removed``) in ``model.prune_order`` -- then fine-tune the pruned model
           (``training.finetune_epochs``). Pruning needs trained weights (an untrained network's
           batch-norm scales are all 1), so it runs here, between the two; dense training, the
           pruning itself and fine-tuning each get a nested window on the trial's meter.
inference: serve fixed splits in batches of ``inference.batch_size``, optionally int8
           (``inference.static_int8``), recording the first served forward pass.

Evidence recorded (``ctx.observed``): ``dense_forward`` and ``served_forward`` (parameters, MACs and
FLOPs per image, input shape, inner width of every block that ran, convolutions that ran in int8),
``pruning`` (what was pruned, with its scores and the order of the steps), ``finetune``; plus the
keys the shared training/system/inference knobs read (epochs_completed, optimizer_lr, ...).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from greenknobs.ml.vision import count, prune, quant
from greenknobs.ml.vision.resnet import MAX_STAGES
from greenknobs.ml.vision.train import fit

STAGE_SETTINGS = tuple(f"model.channel_prune_stage{s}" for s in range(1, MAX_STAGES + 1))


@contextlib.contextmanager
def _window(meter, key: str) -> Iterator[dict[str, Any]]:
    """A nested window on the trial's meter; yields the dict its energy is written into."""
    out: dict[str, Any] = {}
    if meter is None:
        yield out
        return
    with meter.window(key) as w:
        yield out
    m = w.measurement
    out.update({"energy_j": m.energy_j, "time_s": round(m.time_s, 4), "provenance": m.provenance, "meter": m.meter})


def channel_ratios(ctx) -> dict[int, float]:
    return {s: float(ctx.setting(name)) for s, name in enumerate(STAGE_SETTINGS, start=1)}


def pruning_requested(ctx) -> bool:
    return any(r > 0 for r in channel_ratios(ctx).values()) or ctx.setting("model.blocks_removed") > 0


def _progress(ctx, model: torch.nn.Module, validate: Callable[[torch.nn.Module], float] | None, offset: int,
              planned: int) -> Callable[[int, int], None] | None:
    """``ctx.progress_check`` at the fraction of all planned training steps (dense + fine-tuning) done."""
    check = ctx.progress_check
    if check is None or validate is None:
        return None

    def on_step(done: int, _total: int) -> None:
        def score() -> float:
            try:
                return validate(model)
            finally:
                model.train()
        check((offset + done) / max(planned, 1), score)
    return on_step


def train_prune_finetune(ctx, x: torch.Tensor, y: torch.Tensor, calibration: tuple[torch.Tensor, torch.Tensor],
                         finetune_lr_scale: float = 1.0, validate: Callable[[torch.nn.Module], float] | None = None) -> None:
    """Train ``ctx.model`` on (x, y), prune it, fine-tune it; ``ctx.trained_model`` is the result.
    ``validate(model)`` scores validation quality (higher is better) for the search's hopeless-trial check."""
    model, device, record = ctx.model, ctx.runtime.device, ctx.observed.record
    lr, batch_size = ctx.setting("training.learning_rate"), ctx.setting("system.train_batch_size")
    precision = ctx.setting("training.precision")
    epochs, ft_epochs = ctx.setting("training.epochs"), ctx.setting("training.finetune_epochs")
    per_epoch = math.ceil(len(x) / batch_size) if len(x) else 0
    planned = per_epoch * (epochs + ft_epochs)
    energy: dict[str, Any] = {}
    with _window(ctx.meter, "training.dense") as energy["dense"]:
        dense = fit(model, x, y, epochs=epochs, lr=lr, batch_size=batch_size, precision=precision, device=device,
                    seed=ctx.seed, on_step=_progress(ctx, model, validate, 0, planned))
    record("dense_forward", dense.first_forward)
    record("threads_in_training", dense.threads)
    record("train_logits_dtype", dense.logits_dtype)
    record("train_weight_dtype", str(next(model.parameters()).dtype))
    record("train_batch_size_max", dense.batch_size_max)
    record("train_examples_per_epoch", dense.examples_per_epoch)
    record("epochs_completed", dense.epochs_completed)
    record("early_stopped", False)
    record("optimizer_lr", dense.lr_first)
    record("optimizer_lr_last", dense.lr_last)
    record("optimizer_steps", dense.optimizer_steps)
    record("optimizer_steps_taken", dense.optimizer_steps_taken)
    record("optimizer_class", dense.optimizer_class)

    report: dict[str, Any] = {"criterion": None, "channels": {}, "blocks": {"scores": {}, "removed": []}, "steps": []}
    if pruning_requested(ctx):
        cal_x, cal_y = calibration[0].to(device), calibration[1].to(device)
        with _window(ctx.meter, "training.pruning") as energy["pruning"]:
            report = prune.hybrid_prune(model, channel_ratios(ctx), ctx.setting("model.channel_criterion"),
                                        ctx.setting("model.blocks_removed"), ctx.setting("model.prune_order"), cal_x, cal_y)
        report["calibration_images"] = len(cal_x)
    record("pruning", report)

    with _window(ctx.meter, "training.finetune") as energy["finetune"]:
        ft = fit(model, x, y, epochs=ft_epochs, lr=lr * finetune_lr_scale, batch_size=batch_size,
                 precision=precision, device=device, seed=ctx.seed + 1,
                 on_step=_progress(ctx, model, validate, dense.optimizer_steps, planned))
    record("finetune", {"epochs_completed": ft.epochs_completed, "optimizer_steps": ft.optimizer_steps_taken,
                        "lr_first": ft.lr_first, "logits_dtype": ft.logits_dtype,
                        "parameters": ft.first_forward.get("parameters"),
                        "macs_per_image": ft.first_forward.get("macs_per_image"),
                        "block_widths": ft.first_forward.get("block_widths"),
                        "input_shape": ft.first_forward.get("input_shape")})
    model.eval()
    ctx.trained_model = ctx.model = model
    ctx.samples["training"] = dense.examples_per_epoch * dense.epochs_completed + ft.examples_per_epoch * ft.epochs_completed
    ctx.detail("energy_breakdown", energy)
    ctx.detail("optimizer_steps", dense.optimizer_steps + ft.optimizer_steps)
    ctx.detail("final_loss", ft.final_loss if ft.epochs_completed else dense.final_loss)
    ctx.detail("parameters", {"dense": dense.first_forward.get("parameters"), "trained": count.parameter_count(model)})
    if report["steps"]:
        ctx.detail("pruning", {"steps": report["steps"], "before": report["before"], "removed_blocks": report["blocks"]["removed"],
                               "inner_widths": {b: (v["before"], v["after"]) for b, v in report["channels"].items()}})


def inference_model(ctx, model: torch.nn.Module, calibration: torch.Tensor) -> torch.nn.Module:
    """The model to serve: ``model`` itself, or its static int8 version (calibrated here, so the
    calibration's cost is counted as inference)."""
    if ctx.setting("inference.static_int8"):
        ctx.observed.record("int8_engine", quant.engine())
        return quant.quantize_static_int8(model, calibration)
    return model


def serve(ctx, model: torch.nn.Module, splits: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Predict every split in batches of ``inference.batch_size`` (batches never span two splits);
    the first batch's forward pass is recorded as ``served_forward``."""
    device, batch_size = ctx.runtime.device, ctx.setting("inference.batch_size")
    if ctx.setting("inference.static_int8"):
        device = "cpu"  # quantised kernels are CPU kernels
    model.eval()
    ctx.observed.record("threads_in_inference", torch.get_num_threads())
    out: dict[str, list[int]] = {}
    first = True
    with torch.inference_mode():
        for name, x in splits.items():
            preds: list[int] = []
            for s in range(0, len(x), batch_size):
                xb = x[s: s + batch_size].to(device)
                ctx.observed.record_max("inference_batch_size_max", len(xb))
                if first:
                    with count.record_forward(model) as rec:
                        logits = model(xb)
                    trained = ctx.trained_model if ctx.trained_model is not None else model
                    # parameters of the float model that was served or quantised (int8 keeps the count)
                    ctx.observed.record("served_forward", {"parameters": count.parameter_count(trained), **rec.summary()})
                    ctx.observed.record("inference_logits_dtype", str(logits.dtype))
                    first = False
                else:
                    logits = model(xb)
                preds.extend(logits.argmax(-1).tolist())
            ctx.observed.record_max("inference_largest_split", len(x))
            out[name] = preds
    return out
