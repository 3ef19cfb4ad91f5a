"""Fine-tune a Hugging Face encoder for text classification (default: MiniLM-L6 on BBC News).

data:      read the corpus, seeded stratified train/validation/test split, de-duplicate and
           subsample the training split, tokenise (optionally through the token cache)
model:     load the pre-trained encoder with a fresh classification head; knobs prune / cast /
           quantise / attach LoRA (ml.train_loop.prepare_model fixes their order)
system:    configure the runtime (threads, batch sizes, workers, compile, power) and place the model
training:  the shared loop (ml.train_loop.train): AdamW-style fine-tuning with per-batch padding,
           a linear decay schedule, optional distillation, early stopping and an early-exit head
inference: predict the test split (optionally compiled, cast, truncated, early-exiting);
           macro-F1, accuracy, and the majority-class scores
"""

from __future__ import annotations

import functools
import random
from typing import Any

import torch
import torch.nn.functional as F

from greenknobs.errors import ConfigError, IncompatibleKnobs
from greenknobs.ml import distill, early_exit, hf, layers, metrics, probes, token_cache
from greenknobs.ml import train_loop as loop
from greenknobs.ml.data import carve_stopping_rows, select_training_examples
from greenknobs.pipeline import PhasedPipeline
from pipelines.text_data import (
    DEDUP_OPTIONS,
    check_dataset,
    check_dataset_option,
    check_dedup_options,
    check_options,
    encode_labels,
    model_dir_option,
    read_dataset,
    shown,
    split_corpus,
)

DEFAULT_OPTIONS: dict[str, Any] = {
    **DEDUP_OPTIONS,  # dedup: exact | near (before the split), near_duplicate_threshold
    "dataset": "bbc-news",  # or {path, text_column, label_column}
    "model": "minilm",  # or a local Hugging Face model directory
    "split": {"train": 0.7, "validation": 0.1, "test": 0.2},
    "max_examples": None,  # stratified cap on the whole corpus (used by --quick)
    "teacher": None,  # distillation teacher: a fine-tuned classifier directory, or "model" (the model as loaded)
}


def pad_batch(sequences: list[list[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    width = width or max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def collate(rows: list[dict[str, Any]], pad_id: int, width: int | None) -> dict[str, Any]:
    """Runs in a DataLoader worker when system.dataloader_workers > 0 (module level: picklable)."""
    ids, mask = pad_batch([r["input_ids"] for r in rows], pad_id, width)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["label"] for r in rows]),
            "rows": len(rows), "worker": loop.worker_id()}


def cut(ids: list[int], limit: int) -> list[int]:
    """Truncate a tokenised input to ``limit`` tokens, keeping its final [SEP]."""
    return ids if len(ids) <= limit else ids[: limit - 1] + ids[-1:]


class ClassificationTask:
    """How the shared training loop batches, scores and distils for classification."""

    def __init__(self):
        self.ranges: list[tuple[int, int]] = []
        self.first_epoch_batches = 0
        self.exit_steps, self.exit_loss = 0, 0.0
        self.exit_after: int | None = None  # blocks before the exit, read off the first joint forward pass

    def batch_plan(self, ctx, batch_size: int, rng: random.Random) -> list[list[int]]:
        order = list(range(len(ctx.train)))
        rng.shuffle(order)
        if ctx.setting("data.padding") == "length_bucketed":  # similar lengths share a batch; batch order stays random
            order.sort(key=lambda i: len(ctx.train[i]["input_ids"]))
            plan = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
            rng.shuffle(plan)
        else:
            plan = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
        self.first_epoch_batches = self.first_epoch_batches or len(plan)
        return plan

    def collate_fn(self, ctx):
        width = ctx.setting("data.max_seq_len") if ctx.setting("data.padding") == "max_length" else None
        return functools.partial(collate, pad_id=ctx.pad_id, width=width)

    def observe(self, ctx, batch: dict[str, Any]) -> None:
        lengths = batch["attention_mask"].sum(1)
        width, longest = batch["input_ids"].shape[1], int(lengths.max())
        st = ctx.observed.values.setdefault("train_padding_stats", {
            "batches": 0, "pad_tokens": 0, "real_tokens": 0, "wider_than_longest": 0, "min_width": width, "max_width": width})
        st["batches"] += 1
        st["real_tokens"] += int(lengths.sum())
        st["pad_tokens"] += width * len(lengths) - int(lengths.sum())
        st["wider_than_longest"] += int(width > longest and ctx.setting("data.padding") != "max_length")
        st["min_width"], st["max_width"] = min(st["min_width"], width), max(st["max_width"], width)
        self.ranges.append((int(lengths.min()), longest))

    def finish(self, ctx) -> None:
        st = ctx.observed.values.get("train_padding_stats")
        if st:
            ranges = sorted(self.ranges[: self.first_epoch_batches])
            st["bucket_overlaps"] = sum(a[1] > b[0] for a, b in zip(ranges, ranges[1:]))
            st["pad_fraction"] = round(st["pad_tokens"] / max(st["pad_tokens"] + st["real_tokens"], 1), 4)

    def extra_trainable(self, ctx) -> list[torch.nn.Module]:
        depth = ctx.setting("training.exit_head_depth")
        ctx.exit_head, ctx.exit_block = None, 0
        if depth == 0:
            return []
        ctx.exit_block = early_exit.exit_block(ctx.model, depth)
        ctx.exit_head = early_exit.ExitHead(ctx.model.config.hidden_size, len(ctx.extras["label_names"])).to(ctx.runtime.device)
        self.exit_before = probes.checksum(ctx.exit_head)
        return [ctx.exit_head]

    def forward(self, ctx, model, batch, teacher: bool = False):
        want_exit = ctx.exit_head is not None and not teacher
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"],
                  "output_hidden_states": want_exit}
        if want_exit and self.exit_after is None:
            with early_exit.block_outputs(model) as outputs:
                out = model(**inputs)
            self.exit_after = early_exit.blocks_before(outputs, out.hidden_states[ctx.exit_block][:, 0])
        else:
            out = model(**inputs)
        loss = out.loss
        if want_exit:  # joint training: the exit head learns from the hidden state after block k
            exit_loss = F.cross_entropy(ctx.exit_head(out.hidden_states[ctx.exit_block][:, 0]).float(), batch["labels"])
            self.exit_steps += 1
            self.exit_loss += float(exit_loss.detach())
            loss = loss + exit_loss
        return loss, out.logits

    def kd_loss(self, student, teacher, batch, t: float, facts: dict[str, Any]):
        return distill.soft_kl(student, teacher, t, facts)

    def validate(self, ctx, model) -> float:
        """Validation quality now: what the search's progress check reads (nothing else may)."""
        return _macro_f1(ctx, model, ctx.validation)

    def stop_score(self, ctx, model) -> float:
        """What early stopping reads: rows carved from the training split, never validation."""
        return _macro_f1(ctx, model, ctx.extras["early_stopping_rows"])


def _macro_f1(ctx, model, rows) -> float:
    return metrics.macro_f1([r["label"] for r in rows], predict(ctx, model, rows))


def predict(ctx, model, rows, batch_size: int = 32, limit: int | None = None) -> list[int]:
    model.eval()
    device, out = ctx.runtime.device, []
    with torch.inference_mode():
        for s in range(0, len(rows), batch_size):
            ids, mask = pad_batch([cut(r["input_ids"], limit) if limit else r["input_ids"] for r in rows[s: s + batch_size]], ctx.pad_id)
            out.extend(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.argmax(-1).tolist())
    return out


class TextClassificationPipeline(PhasedPipeline):
    name = "text-classification"
    knobs = (
        "data.train_fraction", "data.max_seq_len", "data.dedup", "data.padding", "data.tokenizer_cache",
        "model.layers_removed", "model.weight_dtype", "model.attention", "model.quantized_load",
        "model.lora_rank", "model.lora_alpha", "model.lora_targets",
        "model.pruning_method", "model.pruning_iterative", "model.pruning_compensation", "model.calibration_samples",
        "model.healing_steps", "model.healing_lambda", "model.healing_temperature", "model.healing_entropy_weight",
        "system.threads", "system.interop_threads", "system.train_batch_size", "system.dataloader_workers",
        "system.compile", "system.gpu_power_limit",
        "training.epochs", "training.learning_rate", "training.precision", "training.gradient_checkpointing",
        "training.grad_accumulation", "training.optimizer", "training.early_stopping_patience",
        "training.freeze_layers", "training.kd_lambda", "training.kd_temperature", "training.exit_head_depth",
        "inference.batch_size", "inference.quantization", "inference.precision", "inference.compile",
        "inference.seq_len", "inference.early_exit", "inference.engine",
    )
    metrics = {"macro_f1": "maximize", "accuracy": "maximize"}
    default_metric = "macro_f1"
    # the better of the majority class and a stratified random guesser (greenknobs.ml.metrics.trivial_scores)
    trivial_metrics = {"macro_f1": "trivial_macro_f1", "accuracy": "trivial_accuracy"}

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        merged = check_options(options, DEFAULT_OPTIONS)
        check_dedup_options(merged)
        check_dataset_option(merged["dataset"])
        model_dir_option(merged["model"], "pipeline.model")
        split = merged["split"]
        if not isinstance(split, dict) or set(split) != {"train", "validation", "test"}:
            raise ConfigError("pipeline.split", "expected {train, validation, test} fractions")
        for k, v in split.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1:
                why = " (the search selects on validation and reports on test: both are needed)" if v == 0 else ""
                raise ConfigError(f"pipeline.split.{k}", f"must be a fraction in (0, 1), got {shown(v)}{why}")
        if abs(sum(split.values()) - 1.0) > 1e-6:
            raise ConfigError("pipeline.split", f"fractions must sum to 1, got {sum(split.values()):g}")
        cap = merged["max_examples"]
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 20):
            raise ConfigError("pipeline.max_examples", f"must be an integer >= 20 or null, got {shown(cap)}")
        teacher = merged["teacher"]
        if teacher is not None and teacher != "model":
            if not isinstance(teacher, str):
                raise ConfigError("pipeline.teacher", "expected null, 'model' or a fine-tuned classifier directory")
            model_dir_option(teacher, "pipeline.teacher")
        return merged

    def inputs(self) -> list[str]:
        """The user's dataset file and model folders (the bundled corpus and MiniLM are their packages' versions)."""
        ds, model, teacher = self.options["dataset"], self.options["model"], self.options["teacher"]
        return [str(p) for p in (ds["path"] if isinstance(ds, dict) else None, model if model != "minilm" else None,
                                 teacher if teacher not in (None, "model") else None) if p]

    @classmethod
    def check_inputs(cls, options: dict[str, Any], seed: int) -> dict[str, Any]:
        """Read the dataset and split it as the data phase will (``greenknobs validate``, before trial 0)."""
        return check_dataset(options, seed)

    def warmup_options(self) -> dict[str, Any]:
        return {**self.options, "max_examples": 100}  # 10 per split at least: a stratified split of 5 topics

    def check_knobs(self, values: dict[str, Any], runtime) -> None:
        """Limits of this pipeline, before anything runs."""
        if values.get("training.kd_lambda", 0) > 0 and not self.options["teacher"]:
            raise IncompatibleKnobs("training.kd_lambda > 0 needs pipeline.teacher: a fine-tuned classifier directory, "
                                    "or 'model' when pipeline.model already is one (a fresh classification head "
                                    "has nothing to teach)")
        frozen, removed = values.get("training.freeze_layers", 0), values.get("model.layers_removed", 0)
        if frozen:
            blocks = hf.block_count(hf.resolve_model_dir(self.options["model"]))
            if blocks is not None and frozen >= blocks - removed:
                raise IncompatibleKnobs(f"training.freeze_layers={frozen} would freeze every block: the model keeps "
                                        f"{blocks - removed} of {blocks} after model.layers_removed={removed}")
        limit, max_len = values.get("inference.seq_len", 0), values.get("data.max_seq_len", 0)
        if limit and max_len and limit >= max_len:
            raise IncompatibleKnobs(f"inference.seq_len={limit} cuts nothing: inputs are already at most "
                                    f"data.max_seq_len={max_len} tokens")

    # -- the phases, written as user code would be (greenknobs.trial; run() is PhasedPipeline's) ----
    def data(self, trial) -> None:
        ctx = trial.ctx
        # duplicates (exact, or near with pipeline.dedup: near) dropped before splitting: no text in two
        # splits; the near-duplicates left across the split are counted by split pair
        train, validation, test, facts = split_corpus(read_dataset(self.options), self.options, ctx.seed)
        examples = train + validation + test
        ctx.extras["label_names"] = encode_labels(examples)
        ctx.train, ctx.validation, ctx.test = train, validation, test
        if ctx.setting("training.early_stopping_patience"):  # early stopping scores rows carved from training
            ctx.train, ctx.extras["early_stopping_rows"] = carve_stopping_rows(ctx.train, ctx.seed)
        select_training_examples(ctx)  # de-duplicate, then subsample (data.dedup, data.train_fraction)
        # the trivial predictors' scores depend on the labels only: computed here, once, so the serving
        # windows measure serving the model (their seeded simulation costs ~0.5 CPU-s per split)
        train_labels = [r["label"] for r in ctx.train]
        ctx.extras["trivial"] = {part: metrics.trivial_scores(train_labels, [r["label"] for r in getattr(ctx, part)],
                                                              ctx.seed) for part in ("validation", "test")}
        ctx.extras["model_dir"] = hf.resolve_model_dir(self.options["model"])
        tokenizer = trial.tokenizer(hf.load_tokenizer(ctx.extras["model_dir"]))  # data.max_seq_len caps every call
        ctx.pad_id = tokenizer.pad_token_id or 0
        limit = tokenizer.model_max_length
        rows = ctx.train + ctx.extras.get("early_stopping_rows", []) + ctx.validation + ctx.test
        ids, stats = token_cache.tokenize(
            [r["text"] for r in rows], lambda texts: tokenizer(texts, truncation=True, max_length=NATIVE_MAX_LEN)["input_ids"],
            f"{type(tokenizer).__mro__[-3].__name__}|{tokenizer.name_or_path}|{len(tokenizer)}", limit,
            ctx.setting("data.tokenizer_cache"))
        for r, i in zip(rows, ids):
            r["input_ids"] = i
        ctx.observed.record("tokenization", stats)
        ctx.samples["data"] = len(examples)
        ctx.detail("duplicates_dropped_before_split", facts["dedup"]["exact_dropped"] + facts["dedup"]["near_dropped"])
        ctx.detail("dedup_before_split", facts["dedup"])
        ctx.detail("near_duplicates", facts["near_duplicates"])
        ctx.detail("examples", {"train": len(ctx.train), "validation": len(ctx.validation), "test": len(ctx.test)})
        ctx.detail("labels", ctx.extras["label_names"])
        ctx.detail("tokenization", {k: v for k, v in stats.items() if k != "file"})

    def model(self, trial) -> None:
        ctx = trial.ctx
        load = functools.partial(hf.load_sequence_classifier, num_labels=len(ctx.extras["label_names"]),
                                 id2label=dict(enumerate(ctx.extras["label_names"])))
        # pruning, dtype, attention, quantised loading and LoRA act on the model as it is handed over;
        # block-scoring pruning methods calibrate on training rows (never validation)
        ctx.model = trial.model(load(ctx.extras["model_dir"]), calibration=ctx.train, pad_id=ctx.pad_id)
        teacher = self.options["teacher"]
        # distillation's teacher: the unpruned model as loaded (or a given fine-tuned one), reloaded
        # in the training phase only when distillation is on, so its cost lands in training energy
        source = ctx.extras["model_dir"] if teacher == "model" else (hf.resolve_model_dir(teacher) if teacher else None)
        ctx.teacher_loader = (lambda: load(source)) if source else None
        ctx.detail("parameters", sum(p.numel() for p in ctx.model.parameters()))

    def system(self, trial) -> None:
        ctx = trial.ctx
        ctx.model.to(ctx.runtime.device)
        ctx.detail("device", ctx.runtime.device)
        ctx.detail("threads", torch.get_num_threads())

    def training(self, trial) -> None:
        ctx = trial.ctx
        task = ClassificationTask()
        loop.train(ctx, task)
        task.finish(ctx)
        head = getattr(ctx, "exit_head", None)
        ctx.observed.record("exit_head", {
            "block": ctx.exit_block, "exit_after_blocks": task.exit_after or 0,
            "layers": layers.layer_count(ctx.trained_model), "steps": task.exit_steps,
            "loss_mean": round(task.exit_loss / max(task.exit_steps, 1), 5),
            "weights_moved": head is not None and probes.checksum(head) != task.exit_before})

    def serve(self, trial, split: str) -> None:
        """Predict one split with the trained model: validation steers the search (the inference
        phase); test is held out (scored in its own window, never searched on)."""
        ctx = trial.ctx
        model = ctx.model  # the serving knobs (int8, precision, compile) acted on it as the window opened
        model.eval()
        threshold = ctx.setting("inference.early_exit")
        exits = ctx.extras.setdefault("exits", {})
        exits[split] = {"threshold": threshold, "block": ctx.exit_block if threshold != "off" else 0, "rows": 0,
                        "exited": 0, "full": 0, "truncated_passes": 0, "min_confidence_exited": None,
                        "max_confidence_full": None}
        rows = getattr(ctx, split)
        limit = ctx.setting("inference.seq_len")
        loader = trial.eval_loader(torch.utils.data.DataLoader(
            rows, batch_size=NATIVE_EVAL_BATCH, collate_fn=functools.partial(serve_batch, pad_id=ctx.pad_id, limit=limit)))
        predictions = self._serve(ctx, model, loader, exits[split])
        truth = [r["label"] for r in rows]
        ctx.quality[split] = {"macro_f1": metrics.macro_f1(truth, predictions),
                              "accuracy": metrics.accuracy(truth, predictions), **ctx.extras["trivial"][split]}
        exits[split]["exit_rate"] = round(exits[split]["exited"] / max(exits[split]["rows"], 1), 4)
        ctx.observed.record("early_exit", _merged_exits(exits))
        if threshold != "off":
            ctx.detail("exit_rate", exits[split]["exit_rate"])
        ctx.samples["inference" if split == "validation" else "test"] = len(rows)
        ctx.detail("workload", f"{split} ({len(rows)}) predictions")

    def measure_serving(self, trial) -> None:
        """Steady-state serving energy: the first ``serving.requests`` validation rows, in order, in
        request batches of ``serving.batch_size`` (default: the trial's inference batch size), cut to
        inference.seq_len like every served input, answered by the model as the serving knobs left it."""
        ctx, cfg = trial.ctx, trial.serving_config
        size = cfg.batch_size or ctx.settings.get("inference.batch_size", NATIVE_EVAL_BATCH)
        rows = ctx.validation[: cfg.requests]
        limit = ctx.setting("inference.seq_len")
        device, threshold = ctx.runtime.device, ctx.setting("inference.early_exit")
        batches = [tuple(t.to(device) for t in serve_batch(rows[s: s + size], ctx.pad_id, limit))
                   for s in range(0, len(rows), size)]
        scratch = {"rows": 0, "exited": 0, "full": 0, "truncated_passes": 0, "min_confidence_exited": None,
                   "max_confidence_full": None}
        model = ctx.model

        def serve(i: int) -> int:
            ids, mask = batches[i]
            with torch.inference_mode():
                if threshold == "off":
                    model(input_ids=ids, attention_mask=mask).logits.argmax(-1).tolist()
                else:
                    self._early_exit(ctx, model, ids, mask, threshold, scratch)
            return len(ids)

        trial.serving_energy(serve, len(batches), len(rows), size)

    def _serve(self, ctx, model, loader, exits) -> list[int]:
        device, threshold = ctx.runtime.device, ctx.setting("inference.early_exit")
        predictions: list[int] = []
        with torch.inference_mode():
            for ids, mask in loader:
                ids, mask = ids.to(device), mask.to(device)
                ctx.observed.record_max("inference_longest_input", int(mask.sum(1).max()))
                if threshold == "off":
                    predictions.extend(model(input_ids=ids, attention_mask=mask).logits.argmax(-1).tolist())
                else:
                    predictions.extend(self._early_exit(ctx, model, ids, mask, threshold, exits))
                exits["rows"] += len(ids)
        return predictions

    @staticmethod
    def _early_exit(ctx, model, ids, mask, threshold: float, exits: dict[str, Any]) -> list[int]:
        """Blocks 1..k for every row; the remaining blocks only for rows the exit head is unsure of."""
        with early_exit.truncated(model, ctx.exit_block):
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1][:, 0]
        exits["truncated_passes"] += 1
        exit_logits = ctx.exit_head(hidden.to(next(ctx.exit_head.parameters()).dtype))
        conf, pred = exit_logits.float().softmax(-1).max(-1)
        unsure = conf < threshold
        if unsure.any():
            full = model(input_ids=ids[unsure], attention_mask=mask[unsure]).logits
            pred[unsure] = full.argmax(-1)
            exits["max_confidence_full"] = max(exits["max_confidence_full"] or 0.0, float(conf[unsure].max()))
        if (~unsure).any():  # the confidences behind the decisions: verify checks them against the threshold
            low = float(conf[~unsure].min())
            exits["min_confidence_exited"] = low if exits["min_confidence_exited"] is None else min(exits["min_confidence_exited"], low)
        exits["exited"] += int((~unsure).sum())
        exits["full"] += int(unsure.sum())
        return pred.tolist()


# Where this pipeline's own code starts, before the knobs act (as any script's would)
NATIVE_MAX_LEN, NATIVE_EVAL_BATCH = 512, 32


def serve_batch(rows: list[dict[str, Any]], pad_id: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of inputs to serve, each cut to ``limit`` tokens when inference.seq_len sets one."""
    return pad_batch([cut(r["input_ids"], limit) if limit else r["input_ids"] for r in rows], pad_id)


def _merged_exits(per_split: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The early-exit accounting over every split served so far (what inference.early_exit judges)."""
    out: dict[str, Any] = {}
    for ev in per_split.values():
        for k, v in ev.items():
            if k in ("rows", "exited", "full", "truncated_passes"):
                out[k] = out.get(k, 0) + v
            elif k == "min_confidence_exited" and v is not None:
                out[k] = v if out.get(k) is None else min(out[k], v)
            elif k == "max_confidence_full" and v is not None:
                out[k] = v if out.get(k) is None else max(out[k], v)
            else:
                out.setdefault(k, v)
    out.setdefault("min_confidence_exited", None)
    out.setdefault("max_confidence_full", None)
    out["exit_rate"] = round(out.get("exited", 0) / max(out.get("rows", 0), 1), 4)
    return out
