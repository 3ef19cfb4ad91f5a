"""Image classification with a small ResNet-style CNN trained from scratch, and hybrid pruning.

data:      scikit-learn's bundled handwritten digits (1,797 grey 8 x 8 images, 10 classes, offline) or a
           folder with one sub-folder per class; pixel-identical duplicates dropped before a seeded,
           stratified train/validation/test split; data.train_fraction of the training split kept;
           normalised with the full training split's statistics (the same in every trial) and resized
           to data.input_resolution
model:     a fresh SmallResNet (conv stem, stages of basic residual blocks with batch norm), handed to
           the trial (trial.model): the shared knobs watch it and act on its forward
system:    the model placed on the device (the threads knob acted as the first phase started)
training:  dense training on a DataLoader, optimizer and epoch loop handed to the trial (batch size,
           learning rate, epochs and precision act on them), then structural pruning -- channels per
           stage by model.channel_criterion, residual blocks by importance, in model.prune_order --
           then fine-tuning (training.finetune_epochs); greenknobs.ml.vision.trial
inference: the validation split served through a DataLoader handed to the trial (inference.batch_size),
           optionally static int8 (calibrated in this window); the test split is served the same way
           in the held-out window, outside the objective. Macro-F1 and accuracy per split, beside the
           trivial baselines (majority, stratified random; those depend on the labels only and are
           computed in the data phase, so the serving windows measure serving, not their simulation)
"""

from __future__ import annotations

from typing import Any

import torch

from greenknobs.errors import ConfigError, IncompatibleKnobs
from greenknobs.ml import metrics
from greenknobs.ml.data import stratified_subset, subsample_training
from greenknobs.ml.vision import images
from greenknobs.ml.vision import trial as vision
from greenknobs.ml.vision.resnet import MAX_STAGES, SmallResNet, removable_count
from greenknobs.ml.vision.train import predict
from greenknobs.pipeline import PhasedPipeline
from pipelines.image_data import check_dataset_option, dataset_channels, drop_duplicate_images, load_dataset
from pipelines.text_data import check_options, encode_labels

DEFAULT_OPTIONS: dict[str, Any] = {
    "dataset": "digits",  # or {path: <folder of class folders>, channels: 1|3, image_size: 32}
    "split": {"train": 0.6, "validation": 0.2, "test": 0.2},
    "max_examples": None,  # stratified cap on the whole dataset (used by --quick)
    "widths": [16, 32, 64],  # channels per stage (at most 4 stages)
    "blocks": [2, 2, 2],  # residual blocks per stage
    "calibration_samples": 256,  # training images that score channels (fmap_rank), blocks, and calibrate int8
    "finetune_lr_scale": 0.1,  # fine-tuning peak rate = training.learning_rate x this
}


def _int_list(value: Any, key: str, low: int) -> list[int]:
    if not isinstance(value, list) or not value or len(value) > MAX_STAGES or \
            any(not isinstance(v, int) or isinstance(v, bool) or v < low for v in value):
        raise ConfigError(key, f"expected a list of 1..{MAX_STAGES} integers >= {low}, got {value!r}")
    return value


def _examples(options: dict[str, Any], seed: int) -> tuple[list[dict[str, Any]], int, list[str], tuple[list, list, list]]:
    """Examples (duplicates dropped, capped), how many duplicates went, label names, and the seeded
    stratified train/validation/test split."""
    examples, dropped = drop_duplicate_images(load_dataset(options["dataset"]))  # before splitting: no image in two splits
    if options["max_examples"]:
        examples = stratified_subset(examples, min(1.0, options["max_examples"] / len(examples)), seed)
    labels = encode_labels(examples)
    split = options["split"]
    try:
        parts = metrics.stratified_split(examples, (split["train"], split["validation"], split["test"]), seed)
    except ValueError as exc:  # too few images of a class for a stratified split
        raise ConfigError("pipeline.split", f"{len(examples)} images in {len(labels)} classes cannot be split "
                                            f"{split} with every class in every part: {exc}") from None
    return examples, dropped, labels, parts


class ImageClassificationPipeline(PhasedPipeline):
    name = "image-classification"
    knobs = (
        "data.train_fraction", "data.input_resolution",
        *vision.STAGE_SETTINGS, "model.channel_criterion", "model.blocks_removed", "model.prune_order",
        "system.threads", "system.train_batch_size",
        "training.epochs", "training.learning_rate", "training.precision", "training.finetune_epochs",
        "inference.batch_size", "inference.static_int8",
    )
    metrics = {"macro_f1": "maximize", "accuracy": "maximize"}
    default_metric = "macro_f1"
    trivial_metrics = {"macro_f1": "trivial_macro_f1", "accuracy": "trivial_accuracy"}

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        merged = check_options(options, DEFAULT_OPTIONS)
        check_dataset_option(merged["dataset"])
        split = merged["split"]
        if not isinstance(split, dict) or set(split) != {"train", "validation", "test"}:
            raise ConfigError("pipeline.split", "expected {train, validation, test} fractions")
        for k, v in split.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1:
                raise ConfigError(f"pipeline.split.{k}", f"must be a fraction in (0, 1), got {v!r}")
        if abs(sum(split.values()) - 1.0) > 1e-6:
            raise ConfigError("pipeline.split", f"fractions must sum to 1, got {sum(split.values()):g}")
        cap = merged["max_examples"]
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 20):
            raise ConfigError("pipeline.max_examples", f"must be an integer >= 20 or null, got {cap!r}")
        widths = _int_list(merged["widths"], "pipeline.widths", 1)
        blocks = _int_list(merged["blocks"], "pipeline.blocks", 1)
        if len(widths) != len(blocks):
            raise ConfigError("pipeline.blocks", f"one entry per stage: {len(widths)} widths, {len(blocks)} block counts")
        n = merged["calibration_samples"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise ConfigError("pipeline.calibration_samples", f"expected an integer >= 2, got {n!r}")
        scale = merged["finetune_lr_scale"]
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale <= 10:
            raise ConfigError("pipeline.finetune_lr_scale", f"expected a number in (0, 10], got {scale!r}")
        return merged

    def inputs(self) -> list[str]:
        """The user's image folder (scikit-learn's bundled digits are its package's version)."""
        ds = self.options["dataset"]
        return [str(ds["path"])] if isinstance(ds, dict) else []

    @classmethod
    def check_inputs(cls, options: dict[str, Any], seed: int) -> dict[str, Any]:
        """Read the images and split them as the data phase will (``greenknobs validate``, before trial 0)."""
        examples, dropped, labels, parts = _examples(options, seed)
        return {"images": len(examples), "classes": len(labels), "duplicates_dropped_before_split": dropped,
                "split": {name: len(part) for name, part in zip(("train", "validation", "test"), parts)},
                "image_shape": list(examples[0]["pixels"].shape)}

    def warmup_options(self) -> dict[str, Any]:
        return {**self.options, "max_examples": 100}  # pays imports and first kernels; 2 images per class per split

    def check_knobs(self, values: dict[str, Any], runtime) -> None:
        """This model's shape limits, before anything runs."""
        stages = len(self.options["widths"])
        for s, name in enumerate(vision.STAGE_SETTINGS, start=1):
            if s > stages and values.get(name, 0) > 0:
                raise IncompatibleKnobs(f"{name}={values[name]} but the model has {stages} stages")
        removable = removable_count(self.options["blocks"])
        if values.get("model.blocks_removed", 0) > removable:
            raise IncompatibleKnobs(f"model.blocks_removed={values['model.blocks_removed']} but only {removable} blocks "
                                    f"have an identity shortcut (blocks {self.options['blocks']})")

    # -- the phases, written as user code would be (greenknobs.trial; run() is PhasedPipeline's) ----
    def data(self, trial) -> None:
        ctx = trial.ctx
        examples, dropped, ctx.extras["label_names"], (ctx.train, ctx.validation, ctx.test) = _examples(self.options, ctx.seed)
        # statistics of the whole training split, before any knob: the same normalisation in every trial
        mean, std = images.channel_stats([r["pixels"] for r in ctx.train])
        subsample_training(ctx)  # data.train_fraction: this pipeline's own mechanism
        # the trivial predictors' scores depend on the labels only, not on any prediction: computed here,
        # once, so the serving windows measure serving the model (their seeded simulation costs ~1 CPU-s)
        train_labels = [r["label"] for r in ctx.train]
        ctx.extras["trivial"] = {part: metrics.trivial_scores(train_labels, [r["label"] for r in getattr(ctx, part)], ctx.seed)
                                 for part in ("validation", "test")}
        resolution = ctx.setting("data.input_resolution")  # this pipeline's own mechanism: every split resized
        ctx.extras["tensors"] = {part: images.to_tensors(getattr(ctx, part), resolution, mean, std)
                                 for part in ("train", "validation", "test")}
        ctx.samples["data"] = len(examples)
        trial.detail("duplicates_dropped_before_split", dropped)
        trial.detail("examples", {"train": len(ctx.train), "validation": len(ctx.validation), "test": len(ctx.test)})
        trial.detail("labels", ctx.extras["label_names"])
        trial.detail("image_shape", list(ctx.extras["tensors"]["train"][0].shape[1:]))

    def model(self, trial) -> None:
        ctx = trial.ctx
        # handed over: the shared knobs watch it (threads, batch sizes) and act on its forward (precision);
        # the pruning settings act after dense training (pruning needs trained weights)
        ctx.model = trial.model(SmallResNet(dataset_channels(self.options["dataset"]), len(ctx.extras["label_names"]),
                                            self.options["widths"], self.options["blocks"]))
        trial.detail("parameters", sum(p.numel() for p in ctx.model.parameters()))

    def system(self, trial) -> None:
        ctx = trial.ctx
        ctx.model.to(ctx.runtime.device)
        trial.detail("device", ctx.runtime.device)
        trial.detail("threads", torch.get_num_threads())

    def _calibration(self, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = ctx.extras["tensors"]["train"]
        n = min(self.options["calibration_samples"], len(x))
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(ctx.seed))[:n]
        return x[idx], y[idx]

    def training(self, trial) -> None:
        ctx = trial.ctx
        x, y = ctx.extras["tensors"]["train"]
        val_x, val_y = ctx.extras["tensors"]["validation"]

        def validate(model: torch.nn.Module) -> float:  # for the search's check on hopeless trials
            return metrics.macro_f1(val_y.tolist(), predict(model, val_x, 256, ctx.runtime.device))

        vision.train_prune_finetune(trial, x, y, self._calibration(ctx), self.options["finetune_lr_scale"], validate)

    def serve(self, trial, split: str) -> None:
        """Predict one split: validation steers the search (the inference phase, which also builds
        the static int8 model, so its calibration counts as inference); test is held out (scored in
        its own window with the model the inference phase served, never searched on)."""
        ctx = trial.ctx
        if split == "validation" or "served" not in ctx.extras:  # each repeat of the phase builds it again
            ctx.extras["served"] = vision.inference_model(trial, ctx.model, self._calibration(ctx)[0])
        x = ctx.extras["tensors"][split][0]
        predictions = vision.serve(trial, ctx.extras["served"], x, record=split == "validation")
        truth = [r["label"] for r in getattr(ctx, split)]
        if trial.smoke:  # a smoke run's loaders serve a few batches only
            truth = truth[: len(predictions)]
        trial.quality(split, macro_f1=metrics.macro_f1(truth, predictions), accuracy=metrics.accuracy(truth, predictions),
                      **ctx.extras["trivial"][split])
        if split == "validation":
            fwd = ctx.observed.get("served_forward", {})
            trial.detail("served", {k: fwd.get(k) for k in ("parameters", "flops_per_image", "macs_per_image", "input_shape",
                                                          "blocks", "quantized_convs_ran")})
        ctx.samples["inference" if split == "validation" else "test"] = len(x)
        trial.detail("workload", f"{split} ({len(x)}) predictions")
