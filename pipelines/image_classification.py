"""Image classification with a small ResNet-style CNN trained from scratch, and hybrid pruning.

data:      scikit-learn's bundled handwritten digits (1,797 grey 8 x 8 images, 10 classes, offline) or a
           folder with one sub-folder per class; pixel-identical duplicates dropped before a seeded,
           stratified train/validation/test split; data.train_fraction of the training split kept;
           normalised with the full training split's statistics (the same in every trial) and resized
           to data.input_resolution
model:     a fresh SmallResNet (conv stem, stages of basic residual blocks with batch norm)
system:    threads, batch size; the model placed on the device
training:  dense training (training.epochs), then structural pruning -- channels per stage by
           model.channel_criterion, residual blocks by importance, in model.prune_order -- then
           fine-tuning (training.finetune_epochs); greenknobs.ml.vision.trial
inference: one fixed workload -- every validation and test image -- optionally static int8;
           macro-F1 and accuracy per split, beside the trivial baselines (majority, stratified
           random; those depend on the labels only and are computed in the data phase, so the
           inference window measures serving, not their seeded simulation)
"""

from __future__ import annotations

from typing import Any

import torch

from greenknobs.errors import ConfigError, IncompatibleKnobs
from greenknobs.ml import metrics
from greenknobs.ml.data import stratified_subset, subsample_training
from greenknobs.ml.vision import images, trial
from greenknobs.ml.vision.resnet import MAX_STAGES, SmallResNet, removable_count
from greenknobs.ml.vision.train import predict
from greenknobs.pipeline import Pipeline
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


class ImageClassificationPipeline(Pipeline):
    name = "image-classification"
    knobs = (
        "data.train_fraction", "data.input_resolution",
        *trial.STAGE_SETTINGS, "model.channel_criterion", "model.blocks_removed", "model.prune_order",
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
        for s, name in enumerate(trial.STAGE_SETTINGS, start=1):
            if s > stages and values.get(name, 0) > 0:
                raise IncompatibleKnobs(f"{name}={values[name]} but the model has {stages} stages")
        removable = removable_count(self.options["blocks"])
        if values.get("model.blocks_removed", 0) > removable:
            raise IncompatibleKnobs(f"model.blocks_removed={values['model.blocks_removed']} but only {removable} blocks "
                                    f"have an identity shortcut (blocks {self.options['blocks']})")

    # -- phases ------------------------------------------------------------------------------
    def data(self, ctx) -> None:
        examples, dropped, ctx.extras["label_names"], (ctx.train, ctx.validation, ctx.test) = _examples(self.options, ctx.seed)
        # statistics of the whole training split, before any knob: the same normalisation in every trial
        mean, std = images.channel_stats([r["pixels"] for r in ctx.train])
        ctx.apply_knobs()  # train_fraction, input_resolution: settings
        subsample_training(ctx)
        # the trivial predictors' scores depend on the labels only, not on any prediction: computed here,
        # once, so the inference window measures serving the model (their seeded simulation costs ~1 CPU-s)
        train_labels = [r["label"] for r in ctx.train]
        ctx.extras["trivial"] = {part: metrics.trivial_scores(train_labels, [r["label"] for r in getattr(ctx, part)], ctx.seed)
                                 for part in ("validation", "test")}
        resolution = ctx.setting("data.input_resolution")
        ctx.extras["tensors"] = {part: images.to_tensors(getattr(ctx, part), resolution, mean, std)
                                 for part in ("train", "validation", "test")}
        ctx.samples["data"] = len(examples)
        ctx.detail("duplicates_dropped_before_split", dropped)
        ctx.detail("examples", {"train": len(ctx.train), "validation": len(ctx.validation), "test": len(ctx.test)})
        ctx.detail("labels", ctx.extras["label_names"])
        ctx.detail("image_shape", list(ctx.extras["tensors"]["train"][0].shape[1:]))

    def model(self, ctx) -> None:
        ctx.model = SmallResNet(dataset_channels(self.options["dataset"]), len(ctx.extras["label_names"]),
                                self.options["widths"], self.options["blocks"])
        ctx.apply_knobs()  # pruning settings: they act after dense training (pruning needs trained weights)
        ctx.detail("parameters", sum(p.numel() for p in ctx.model.parameters()))

    def system(self, ctx) -> None:
        ctx.apply_knobs()  # threads, batch size
        ctx.model.to(ctx.runtime.device)
        ctx.detail("device", ctx.runtime.device)
        ctx.detail("threads", torch.get_num_threads())

    def _calibration(self, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = ctx.extras["tensors"]["train"]
        n = min(self.options["calibration_samples"], len(x))
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(ctx.seed))[:n]
        return x[idx], y[idx]

    def training(self, ctx) -> None:
        ctx.apply_knobs()  # epochs, learning rate, precision, fine-tune epochs
        x, y = ctx.extras["tensors"]["train"]
        val_x, val_y = ctx.extras["tensors"]["validation"]

        def validate(model: torch.nn.Module) -> float:  # for the search's check on hopeless trials
            return metrics.macro_f1(val_y.tolist(), predict(model, val_x, 256, ctx.runtime.device))

        trial.train_prune_finetune(ctx, x, y, self._calibration(ctx), self.options["finetune_lr_scale"], validate)

    def inference(self, ctx) -> None:
        """Serve one fixed workload -- every validation and test image. Validation steers the search;
        test is reported, never searched on."""
        ctx.apply_knobs()  # batch size, static int8
        served = trial.inference_model(ctx, ctx.model, self._calibration(ctx)[0])
        ctx.model = served
        splits = {part: ctx.extras["tensors"][part][0] for part in ("validation", "test")}
        predictions = trial.serve(ctx, served, splits)
        ctx.quality = {}
        for part in ("validation", "test"):
            truth = [r["label"] for r in getattr(ctx, part)]
            ctx.quality[part] = {"macro_f1": metrics.macro_f1(truth, predictions[part]),
                                 "accuracy": metrics.accuracy(truth, predictions[part]), **ctx.extras["trivial"][part]}
        fwd = ctx.observed.get("served_forward", {})
        ctx.detail("served", {k: fwd.get(k) for k in ("parameters", "flops_per_image", "macs_per_image", "input_shape",
                                                      "blocks", "quantized_convs_ran")})
        ctx.samples["inference"] = len(ctx.validation) + len(ctx.test)
        ctx.detail("workload", f"validation ({len(ctx.validation)}) + test ({len(ctx.test)}) predictions")
