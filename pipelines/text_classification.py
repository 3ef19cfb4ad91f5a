"""Fine-tune a Hugging Face encoder for text classification (default: MiniLM-L6 on BBC News).

data:      read the corpus, seeded stratified train/validation/test split, tokenise
model:     load the pre-trained encoder with a fresh classification head
system:    configure the runtime (threads, batch sizes) and place the model on the device
training:  AdamW fine-tuning with per-batch (dynamic) padding and a linear decay schedule
inference: predict the test split; macro-F1, accuracy, and the majority-class scores
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import torch

from greenknobs import hf, metrics
from greenknobs.errors import ConfigError
from greenknobs.knobs.data import stratified_subset
from greenknobs.pipeline import Pipeline
from pipelines.text_data import load_bbc_news, load_table

DEFAULT_OPTIONS: dict[str, Any] = {
    "dataset": "bbc-news",  # or {path, text_column, label_column}
    "model": "minilm",  # or a local Hugging Face model directory
    "split": {"train": 0.7, "validation": 0.1, "test": 0.2},
    "max_examples": None,  # stratified cap on the whole corpus (used by --quick)
}


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def autocast(device: str, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


class TextClassificationPipeline(Pipeline):
    name = "text-classification"
    knobs = (
        "data.train_fraction", "data.max_seq_len", "model.layers_removed", "system.threads",
        "system.train_batch_size", "training.epochs", "training.learning_rate", "training.precision",
        "inference.batch_size", "inference.quantization",
    )
    metrics = {"macro_f1": "maximize", "accuracy": "maximize"}
    default_metric = "macro_f1"
    trivial_metrics = {"macro_f1": "majority_macro_f1", "accuracy": "majority_accuracy"}

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        unknown = set(options) - set(DEFAULT_OPTIONS)
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(f"pipeline.{key}", f"unknown option; known: {', '.join(DEFAULT_OPTIONS)}")
        merged = {**DEFAULT_OPTIONS, **options}
        ds = merged["dataset"]
        if isinstance(ds, dict):
            if "path" not in ds:
                raise ConfigError("pipeline.dataset.path", "required for a file dataset")
            extra = set(ds) - {"path", "text_column", "label_column"}
            if extra:
                raise ConfigError(f"pipeline.dataset.{sorted(extra)[0]}", "unknown option")
        elif ds != "bbc-news":
            raise ConfigError("pipeline.dataset", f"expected 'bbc-news' or {{path: ...}}, got {ds!r}")
        if not isinstance(merged["model"], str):
            raise ConfigError("pipeline.model", "expected 'minilm' or a local model directory")
        hf.resolve_model_dir(merged["model"])
        split = merged["split"]
        if not isinstance(split, dict) or set(split) != {"train", "validation", "test"}:
            raise ConfigError("pipeline.split", "expected {train, validation, test} fractions")
        for k, v in split.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1:
                raise ConfigError(f"pipeline.split.{k}", f"must be a fraction in [0, 1), got {v!r}")
        if abs(sum(split.values()) - 1.0) > 1e-6:
            raise ConfigError("pipeline.split", f"fractions must sum to 1, got {sum(split.values()):g}")
        cap = merged["max_examples"]
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 20):
            raise ConfigError("pipeline.max_examples", f"must be an integer >= 20 or null, got {cap!r}")
        return merged

    # -- phases ------------------------------------------------------------------------------
    def data(self, ctx) -> None:
        ds = self.options["dataset"]
        examples = load_bbc_news() if ds == "bbc-news" else load_table(
            ds["path"], ds.get("text_column", "text"), ds.get("label_column", "label"))
        if self.options["max_examples"]:
            examples = stratified_subset(examples, min(1.0, self.options["max_examples"] / len(examples)), ctx.seed)
        labels = sorted({e["label"] for e in examples})
        ctx.label_names = labels
        label_id = {name: i for i, name in enumerate(labels)}
        for e in examples:
            e["label"] = label_id[e["label"]]
        split = self.options["split"]
        ctx.train, ctx.validation, ctx.test = metrics.stratified_split(
            examples, (split["train"], split["validation"], split["test"]), ctx.seed)
        ctx.apply_knobs()  # train_fraction subsamples ctx.train; max_seq_len sets the truncation
        ctx.model_dir = hf.resolve_model_dir(self.options["model"])
        tokenizer = hf.load_tokenizer(ctx.model_dir)
        ctx.pad_id = tokenizer.pad_token_id or 0
        max_len = ctx.setting("max_seq_len")
        for part in ("train", "validation", "test"):
            rows = getattr(ctx, part)
            enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_len)
            for r, ids in zip(rows, enc["input_ids"]):
                r["input_ids"] = ids
            ctx.observed.record(f"truncated_{part}_inputs", sum(len(ids) >= max_len for ids in enc["input_ids"]))
        ctx.samples["data"] = len(examples)
        ctx.detail("examples", {"train": len(ctx.train), "validation": len(ctx.validation), "test": len(ctx.test)})
        ctx.detail("labels", labels)

    def model(self, ctx) -> None:
        ctx.model = hf.load_sequence_classifier(ctx.model_dir, len(ctx.label_names), dict(enumerate(ctx.label_names)))
        ctx.apply_knobs()  # layers_removed prunes the loaded model
        ctx.detail("parameters", sum(p.numel() for p in ctx.model.parameters()))

    def system(self, ctx) -> None:
        ctx.apply_knobs()  # threads, batch sizes
        ctx.model.to(ctx.runtime.device)
        ctx.detail("device", ctx.runtime.device)
        ctx.detail("threads", torch.get_num_threads())

    def training(self, ctx) -> None:
        ctx.apply_knobs()  # epochs, learning rate, precision
        model, device = ctx.model, ctx.runtime.device
        epochs, batch_size = ctx.setting("epochs"), ctx.setting("train_batch_size")
        dtype = ctx.setting("autocast_dtype")
        optimizer = torch.optim.AdamW(model.parameters(), lr=ctx.setting("learning_rate"))
        steps_per_epoch = (len(ctx.train) + batch_size - 1) // batch_size
        total_steps = epochs * steps_per_epoch
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps))
        ctx.observed.record("optimizer_lr", optimizer.param_groups[0]["initial_lr"])
        ctx.observed.record("threads_in_training", torch.get_num_threads())
        scaler = torch.amp.GradScaler(device) if dtype == torch.float16 else None
        rng = random.Random(ctx.seed)
        order = list(range(len(ctx.train)))
        model.train()
        steps = 0
        for epoch in range(epochs):
            rng.shuffle(order)
            seen = 0
            for start in range(0, len(order), batch_size):
                rows = [ctx.train[i] for i in order[start : start + batch_size]]
                ids, mask = pad_batch([r["input_ids"] for r in rows], ctx.pad_id)
                labels = torch.tensor([r["label"] for r in rows])
                ctx.observed.record_max("longest_input_tokens", ids.shape[1])
                ctx.observed.record_max("train_batch_size_max", len(rows))
                with autocast(device, dtype):
                    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
                if steps == 0:
                    ctx.observed.record("train_logits_dtype", str(out.logits.dtype))
                optimizer.zero_grad(set_to_none=True)
                if scaler:
                    scaler.scale(out.loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    out.loss.backward()
                    optimizer.step()
                schedule.step()
                steps += 1
                seen += len(rows)
            ctx.observed.record("epochs_completed", epoch + 1)
            ctx.observed.record("train_examples_per_epoch", seen)
        ctx.observed.record("optimizer_steps", steps)
        ctx.trained_model = model
        ctx.samples["training"] = seen * epochs
        ctx.detail("optimizer_steps", steps)
        ctx.detail("final_loss", out.loss.item())

    def inference(self, ctx) -> None:
        ctx.apply_knobs()  # batch size, quantisation (replaces ctx.model)
        model, device = ctx.model, ctx.runtime.device
        model.eval()
        batch_size = ctx.setting("inference_batch_size")
        ctx.observed.record("threads_in_inference", torch.get_num_threads())
        ctx.observed.record("inference_quantized_linears", _count_quantized(model))
        predictions: list[int] = []
        with torch.inference_mode():
            for start in range(0, len(ctx.test), batch_size):
                rows = ctx.test[start : start + batch_size]
                ids, mask = pad_batch([r["input_ids"] for r in rows], ctx.pad_id)
                ctx.observed.record_max("longest_input_tokens", ids.shape[1])
                ctx.observed.record_max("inference_batch_size_max", len(rows))
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                predictions.extend(logits.argmax(-1).tolist())
        truth = [r["label"] for r in ctx.test]
        ctx.quality = {
            "macro_f1": metrics.macro_f1(truth, predictions),
            "accuracy": metrics.accuracy(truth, predictions),
            **metrics.majority_class_scores([r["label"] for r in ctx.train], truth),
        }
        ctx.samples["inference"] = len(ctx.test)


def _count_quantized(model) -> int:
    from greenknobs.knobs.inference import count_quantized_linears

    return count_quantized_linears(model)
