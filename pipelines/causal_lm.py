"""Causal language modelling: a small pre-norm (LLaMA-style) decoder on BBC News text.

data:      read the articles, drop exact duplicates, seeded split by article (stratified by topic), de-duplicate the
           training articles, tokenise with the bundled MiniLM WordPiece tokenizer (optionally
           through the token cache), keep the ``vocab_size`` most frequent training tokens
           (the rest -> [UNK]; the mapping depends only on the full training split, so every trial
           scores over the same vocabulary), cut the token stream into blocks of data.max_seq_len,
           then keep data.train_fraction of the training blocks
model:     a fresh decoder from a config (``model: scratch``) or a trained one from a directory
           (e.g. one this pipeline saved with ``save_model``: the test bed for pruning + healing)
training:  the shared loop (ml.train_loop.train), next-token cross-entropy
inference: validation perplexity (searched); test perplexity is scored in the held-out window
           (outside the objective); both in blocks of
           inference.seq_len (0 = pipeline.eval_seq_len, fixed so that trials with different
           training block lengths stay comparable); the trivial predictor is a unigram model fit
           on the training tokens
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F

from greenknobs.errors import ConfigError, IncompatibleKnobs
from greenknobs.ml import distill, hf, token_cache
from greenknobs.ml import train_loop as loop
from greenknobs.ml.data import (
    carve_stopping_rows,
    deduplicate_training,
    subsample_training,
)
from greenknobs.pipeline import PhasedPipeline
from pipelines.text_data import (
    DEDUP_OPTIONS,
    check_dataset,
    check_dataset_option,
    check_dedup_options,
    check_options,
    model_dir_option,
    read_dataset,
    shown,
    split_corpus,
)

DEFAULT_OPTIONS: dict[str, Any] = {
    **DEDUP_OPTIONS,  # dedup: exact | near (before the split), near_duplicate_threshold
    "dataset": "bbc-news",  # or {path, text_column, label_column}
    "model": "scratch",  # or a local directory with a trained causal LM of the same vocabulary
    "split": {"train": 0.8, "validation": 0.1, "test": 0.1},
    "max_examples": None,  # stratified cap on the number of articles (used by --quick)
    "vocab_size": 8000,  # most frequent training tokens kept; a small softmax keeps the model cheap
    "hidden_size": 128,
    "layers": 4,
    "heads": 4,
    "save_model": None,  # a directory: save the trained model there at the end of training
    "eval_seq_len": 128,  # perplexity block length, fixed so trials with other training blocks stay comparable
}
_INTS = {"vocab_size": 50, "hidden_size": 8, "layers": 1, "heads": 1, "eval_seq_len": 8}


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"input_ids": torch.tensor([r["input_ids"] for r in rows]), "rows": len(rows), "worker": loop.worker_id()}


def blocks(stream: list[int], length: int) -> list[list[int]]:
    return [stream[s: s + length] for s in range(0, len(stream) - length + 1, length)]


def token_nll(model, ids: torch.Tensor) -> tuple[float, int, torch.Tensor]:
    """Summed next-token negative log-likelihood, the number of predicted tokens, and the logits."""
    logits = model(input_ids=ids).logits
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
    return float(nll), ids[:, 1:].numel(), logits


def perplexity(ctx, model, rows: list[dict[str, Any]], batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(rows), batch_size):
            nll, n, _ = token_nll(model, torch.tensor([r["input_ids"] for r in rows[s: s + batch_size]]).to(ctx.runtime.device))
            total, count = total + nll, count + n
    return math.exp(total / max(count, 1))


def unigram_perplexity(train_stream: list[int], test_rows: list[dict[str, Any]], vocab: int) -> float:
    """The trivial predictor: token frequencies of the training text, add-one smoothed."""
    counts = Counter(train_stream)
    total = len(train_stream) + vocab
    nll, n = 0.0, 0
    for r in test_rows:
        for t in r["input_ids"][1:]:
            nll -= math.log((counts.get(t, 0) + 1) / total)
            n += 1
    return math.exp(nll / max(n, 1))


class LanguageModelTask:
    def batch_plan(self, ctx, batch_size: int, rng: random.Random) -> list[list[int]]:
        order = list(range(len(ctx.train)))
        rng.shuffle(order)
        return [order[s: s + batch_size] for s in range(0, len(order), batch_size)]

    def collate_fn(self, ctx):
        return collate

    def observe(self, ctx, batch: dict[str, Any]) -> None:
        """Nothing to record: the knobs watch the lengths the model is fed."""

    def extra_trainable(self, ctx) -> list:
        return []

    def forward(self, ctx, model, batch, teacher: bool = False):
        out = model(input_ids=batch["input_ids"], labels=batch["input_ids"])
        return out.loss, out.logits

    def kd_loss(self, student, teacher, batch, t: float, facts: dict[str, Any]):
        return distill.soft_kl_tokens(student, teacher, t, facts)  # mean over predicted tokens

    def validate(self, ctx, model) -> float:
        """Minus validation perplexity now: what the search's progress check reads."""
        return -perplexity(ctx, model, ctx.validation, loop.NATIVE_BATCH)

    def stop_score(self, ctx, model) -> float:
        """What early stopping reads: blocks carved from the training split, never validation."""
        return -perplexity(ctx, model, ctx.extras["early_stopping_rows"], loop.NATIVE_BATCH)


class CausalLMPipeline(PhasedPipeline):
    name = "causal-lm"
    knobs = (
        "data.train_fraction", "data.max_seq_len", "data.dedup", "data.tokenizer_cache",
        "model.layers_removed", "model.weight_dtype", "model.attention", "model.quantized_load",
        "model.lora_rank", "model.lora_alpha", "model.lora_targets",
        "model.pruning_method", "model.pruning_iterative", "model.pruning_compensation", "model.calibration_samples",
        "model.healing_steps", "model.healing_lambda", "model.healing_temperature", "model.healing_entropy_weight",
        "system.threads", "system.interop_threads", "system.train_batch_size", "system.dataloader_workers",
        "system.compile", "system.gpu_power_limit",
        "training.epochs", "training.learning_rate", "training.precision", "training.gradient_checkpointing",
        "training.grad_accumulation", "training.optimizer", "training.early_stopping_patience",
        "training.freeze_layers", "training.kd_lambda", "training.kd_temperature",
        "inference.batch_size", "inference.quantization", "inference.precision", "inference.compile",
        "inference.seq_len",
    )
    metrics = {"perplexity": "minimize"}
    default_metric = "perplexity"
    trivial_metrics = {"perplexity": "unigram_perplexity"}

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        merged = check_options(options, DEFAULT_OPTIONS)
        check_dedup_options(merged)
        check_dataset_option(merged["dataset"])
        model_dir_option(merged["model"], "pipeline.model", keywords=("scratch",))
        split = merged["split"]
        if not isinstance(split, dict) or set(split) != {"train", "validation", "test"}:
            raise ConfigError("pipeline.split", "expected {train, validation, test} fractions")
        for k, v in split.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1:
                raise ConfigError(f"pipeline.split.{k}", f"must be a fraction in (0, 1), got {shown(v)}")
        if abs(sum(split.values()) - 1.0) > 1e-6:
            raise ConfigError("pipeline.split", f"fractions must sum to 1, got {sum(split.values()):g}")
        cap = merged["max_examples"]
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 20):
            raise ConfigError("pipeline.max_examples", f"must be an integer >= 20 or null, got {shown(cap)}")
        for key, low in _INTS.items():
            v = merged[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"pipeline.{key}", f"must be an integer >= {low}, got {shown(v)}")
        if merged["hidden_size"] % merged["heads"]:
            raise ConfigError("pipeline.heads", f"must divide hidden_size ({merged['hidden_size']})")
        if merged["save_model"] is not None and (not isinstance(merged["save_model"], str) or not merged["save_model"]):
            raise ConfigError("pipeline.save_model", "expected a directory path or null")
        return merged

    def inputs(self) -> list[str]:
        """The user's dataset file and trained model folder (the bundled corpus is its package's version)."""
        ds, model = self.options["dataset"], self.options["model"]
        return [str(p) for p in (ds["path"] if isinstance(ds, dict) else None, model if model != "scratch" else None) if p]

    @classmethod
    def check_inputs(cls, options: dict[str, Any], seed: int) -> dict[str, Any]:
        """Read the dataset and split it as the data phase will (``greenknobs validate``, before trial 0);
        one topic is enough for a language model (labels only stratify the split)."""
        return check_dataset(options, seed, min_labels=1)

    def warmup_options(self) -> dict[str, Any]:
        return {**self.options, "max_examples": 100, "save_model": None}

    def check_knobs(self, values: dict[str, Any], runtime) -> None:
        if values.get("training.kd_lambda", 0) > 0 and self.options["model"] == "scratch":
            raise IncompatibleKnobs("training.kd_lambda > 0 needs a trained teacher: set pipeline.model to a trained "
                                    "model directory (a model trained from scratch has no unpruned teacher)")

    # -- phases ------------------------------------------------------------------------------
    # -- the phases, written as user code would be (greenknobs.trial; run() is PhasedPipeline's) ----
    def data(self, trial) -> None:
        ctx = trial.ctx
        # duplicates dropped before splitting (pipeline.dedup: exact, or near); near-duplicates left counted
        train, ctx.validation, ctx.test, facts = split_corpus(read_dataset(self.options), self.options, ctx.seed)
        articles = train + ctx.validation + ctx.test
        ctx.train = train
        tokenizer = hf.load_tokenizer(hf.bundled_minilm_dir())  # not handed over: articles are streamed, then cut into blocks
        rows = train + ctx.validation + ctx.test
        ids, stats = token_cache.tokenize(
            [r["text"] for r in rows], lambda texts: tokenizer(texts, truncation=False, verbose=False)["input_ids"],
            f"{type(tokenizer).__name__}|minilm|{len(tokenizer)}", 0, ctx.setting("data.tokenizer_cache"))
        ctx.observed.record("tokenization", stats)
        for r, i in zip(rows, ids):
            r["ids"] = i[1:]  # drop [CLS]; the trailing [SEP] separates articles in the stream
        # vocabulary from the full training split (before any knob), so every trial shares it
        freq = Counter(t for r in train for t in r["ids"])
        keep = [t for t, _ in freq.most_common(self.options["vocab_size"] - 1)]
        ctx.extras["vocab_map"] = {t: i + 1 for i, t in enumerate(keep)}  # 0 = [UNK]
        ctx.extras["vocab"] = self.options["vocab_size"]
        deduplicate_training(ctx)
        block = ctx.setting("data.max_seq_len")  # this pipeline's own mechanism: the training block length
        ctx.extras["train_stream"] = self._stream(ctx, ctx.train)
        ctx.train = [{"input_ids": b} for b in blocks(ctx.extras["train_stream"], block)]
        if ctx.setting("training.early_stopping_patience"):  # early stopping scores blocks carved from training
            ctx.train, ctx.extras["early_stopping_rows"] = carve_stopping_rows(ctx.train, ctx.seed)
        subsample_training(ctx)  # a seeded fraction of the training blocks (one stratum: no labels)
        ctx.extras["validation_articles"], ctx.extras["test_articles"] = ctx.validation, ctx.test
        # the progress check scores validation in blocks of the training length (compared within a trial only)
        ctx.validation = [{"input_ids": b} for b in blocks(self._stream(ctx, ctx.validation), block)]
        ctx.samples["data"] = len(articles)
        ctx.detail("duplicates_dropped_before_split", facts["dedup"]["exact_dropped"] + facts["dedup"]["near_dropped"])
        ctx.detail("dedup_before_split", facts["dedup"])
        ctx.detail("near_duplicates", facts["near_duplicates"])
        ctx.detail("articles", {"train": len(train), "validation": len(ctx.extras["validation_articles"]),
                                "test": len(ctx.test)})
        ctx.detail("training_blocks", len(ctx.train))
        ctx.detail("tokenization", {k: v for k, v in stats.items() if k != "file"})

    @staticmethod
    def _stream(ctx, articles) -> list[int]:
        return [ctx.extras["vocab_map"].get(t, 0) for r in articles for t in r["ids"]]

    def model(self, trial) -> None:
        ctx = trial.ctx
        o = self.options
        if o["model"] == "scratch":
            torch.manual_seed(ctx.seed)
            model = hf.llama_lm_from_config(
                vocab_size=ctx.extras["vocab"], hidden_size=o["hidden_size"], intermediate_size=o["hidden_size"] * 3,
                num_hidden_layers=o["layers"], num_attention_heads=o["heads"], num_key_value_heads=o["heads"],
                max_position_embeddings=1024, tie_word_embeddings=True)
            ctx.teacher_loader = None
        else:
            source = hf.resolve_model_dir(o["model"])
            model = hf.load_causal_lm(source)
            if model.config.vocab_size != ctx.extras["vocab"]:
                raise ConfigError("pipeline.model", f"its vocabulary has {model.config.vocab_size} tokens, "
                                                    f"pipeline.vocab_size is {ctx.extras['vocab']}")
            ctx.teacher_loader = lambda: hf.load_causal_lm(source)  # the unpruned model as loaded
        # pruning (calibrated on training blocks), dtype, attention, quantised loading, LoRA act as it is handed over
        ctx.model = trial.model(model, calibration=ctx.train, pad_id=0)
        ctx.detail("parameters", sum(p.numel() for p in ctx.model.parameters()))

    def system(self, trial) -> None:
        ctx = trial.ctx
        ctx.model.to(ctx.runtime.device)
        ctx.detail("device", ctx.runtime.device)
        ctx.detail("threads", torch.get_num_threads())

    def training(self, trial) -> None:
        ctx = trial.ctx
        loop.train(ctx, LanguageModelTask())
        if self.options["save_model"]:
            hf.save_pretrained(ctx.trained_model, self.options["save_model"])

    def serve(self, trial, split: str) -> None:
        """Perplexity of one split's articles in fixed-length blocks: validation (searched, the
        inference phase) or test (held out, its own window)."""
        ctx = trial.ctx
        model = ctx.model  # the serving knobs acted on it as the window opened
        model.eval()
        length = ctx.setting("inference.seq_len") or self.options["eval_seq_len"]
        ctx.observed.record("inference_default_len", self.options["eval_seq_len"])
        ctx.observed.record("inference_block_len", length)
        rows = [{"input_ids": b} for b in blocks(self._stream(ctx, ctx.extras[f"{split}_articles"]), length)]
        loader = trial.eval_loader(torch.utils.data.DataLoader(rows, batch_size=32, collate_fn=collate))
        total, count = 0.0, 0
        with torch.inference_mode():
            for batch in loader:
                ids = batch["input_ids"].to(ctx.runtime.device)
                ctx.observed.record_max("inference_longest_input", ids.shape[1])
                nll, n, _ = token_nll(model, ids)
                total, count = total + nll, count + n
        ctx.quality[split] = {"perplexity": math.exp(total / max(count, 1)),
                              "unigram_perplexity": unigram_perplexity(ctx.extras["train_stream"], rows, ctx.extras["vocab"])}
        ctx.samples["inference" if split == "validation" else "test"] = len(rows)
        ctx.detail("tokens", count)
        ctx.detail("workload", f"{split} articles in {len(rows)} blocks of {length} tokens")
