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
inference: validation perplexity (searched) and test perplexity (held out) in blocks of
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
from greenknobs.ml import distill, hf, metrics, token_cache
from greenknobs.ml import train_loop as loop
from greenknobs.ml.data import deduplicate_training, drop_duplicate_texts, stratified_subset, subsample_training
from greenknobs.ml.quantize import count_quantized_linears
from greenknobs.pipeline import Pipeline
from pipelines.text_data import (
    check_dataset,
    check_dataset_option,
    check_options,
    load_bbc_news,
    load_table,
    model_dir_option,
    shown,
)

DEFAULT_OPTIONS: dict[str, Any] = {
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
        ctx.observed.record_max("longest_input_tokens", batch["input_ids"].shape[1])

    def extra_trainable(self, ctx) -> list:
        return []

    def forward(self, ctx, model, batch, teacher: bool = False):
        out = model(input_ids=batch["input_ids"], labels=batch["input_ids"])
        return out.loss, out.logits

    def kd_loss(self, student, teacher, batch, t: float, facts: dict[str, Any]):
        return distill.soft_kl_tokens(student, teacher, t, facts)  # mean over predicted tokens

    def validate(self, ctx, model) -> float:
        return -perplexity(ctx, model, ctx.validation, ctx.setting("system.train_batch_size"))


class CausalLMPipeline(Pipeline):
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
    def data(self, ctx) -> None:
        ds = self.options["dataset"]
        articles = load_bbc_news() if ds == "bbc-news" else load_table(
            ds["path"], ds.get("text_column", "text"), ds.get("label_column", "label"))
        articles, dropped = drop_duplicate_texts(articles)  # before splitting: no article in two splits
        if self.options["max_examples"]:
            articles = stratified_subset(articles, min(1.0, self.options["max_examples"] / len(articles)), ctx.seed)
        split = self.options["split"]
        train, ctx.validation, ctx.test = metrics.stratified_split(
            articles, (split["train"], split["validation"], split["test"]), ctx.seed)
        ctx.train = train
        ctx.apply_knobs()  # dedup, train_fraction, max_seq_len (block length), tokenizer_cache: settings
        tokenizer = hf.load_tokenizer(hf.bundled_minilm_dir())
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
        block = ctx.setting("data.max_seq_len")
        ctx.extras["train_stream"] = self._stream(ctx, ctx.train)
        ctx.train = [{"input_ids": b} for b in blocks(ctx.extras["train_stream"], block)]
        subsample_training(ctx)  # a seeded fraction of the training blocks (one stratum: no labels)
        ctx.observed.record("truncated_train_inputs", len(ctx.train))  # every block is cut at the limit
        ctx.extras["validation_articles"], ctx.extras["test_articles"] = ctx.validation, ctx.test
        # early stopping's validation passes use blocks of the training length (compared within a trial only)
        ctx.validation = [{"input_ids": b} for b in blocks(self._stream(ctx, ctx.validation), block)]
        ctx.samples["data"] = len(articles)
        ctx.detail("duplicates_dropped_before_split", dropped)
        ctx.detail("articles", {"train": len(train), "validation": len(ctx.extras["validation_articles"]),
                                "test": len(ctx.test)})
        ctx.detail("training_blocks", len(ctx.train))
        ctx.detail("tokenization", {k: v for k, v in stats.items() if k != "file"})

    @staticmethod
    def _stream(ctx, articles) -> list[int]:
        return [ctx.extras["vocab_map"].get(t, 0) for r in articles for t in r["ids"]]

    def model(self, ctx) -> None:
        o = self.options
        if o["model"] == "scratch":
            torch.manual_seed(ctx.seed)
            ctx.model = hf.llama_lm_from_config(
                vocab_size=ctx.extras["vocab"], hidden_size=o["hidden_size"], intermediate_size=o["hidden_size"] * 3,
                num_hidden_layers=o["layers"], num_attention_heads=o["heads"], num_key_value_heads=o["heads"],
                max_position_embeddings=1024, tie_word_embeddings=True)
            ctx.teacher_loader = None
        else:
            source = hf.resolve_model_dir(o["model"])
            ctx.model = hf.load_causal_lm(source)
            if ctx.model.config.vocab_size != ctx.extras["vocab"]:
                raise ConfigError("pipeline.model", f"its vocabulary has {ctx.model.config.vocab_size} tokens, "
                                                    f"pipeline.vocab_size is {ctx.extras['vocab']}")
            ctx.teacher_loader = lambda: hf.load_causal_lm(source)  # the unpruned model as loaded
        ctx.apply_knobs()  # pruning, dtype and attention act now; quantisation and LoRA follow in order
        loop.prepare_model(ctx, trainable_heads=[])
        ctx.detail("parameters", sum(p.numel() for p in ctx.model.parameters()))

    def system(self, ctx) -> None:
        ctx.apply_knobs()
        ctx.model.to(ctx.runtime.device)
        ctx.detail("device", ctx.runtime.device)
        ctx.detail("threads", torch.get_num_threads())

    def training(self, ctx) -> None:
        ctx.apply_knobs()
        loop.train(ctx, LanguageModelTask())
        if self.options["save_model"]:
            hf.save_pretrained(ctx.trained_model, self.options["save_model"])

    def inference(self, ctx) -> None:
        """Perplexity on the validation articles (searched) and the test articles (held out), in
        fixed-length blocks: one fixed workload, so inference energy compares across trials."""
        ctx.apply_knobs()  # batch size, quantisation, precision, compile, seq_len
        model = ctx.model
        model.eval()
        served, compile_stats = loop.inference_model(ctx, model)
        length = ctx.setting("inference.seq_len") or self.options["eval_seq_len"]
        ctx.observed.record("inference_default_len", self.options["eval_seq_len"])
        ctx.observed.record("threads_in_inference", torch.get_num_threads())
        ctx.observed.record("inference_quantized_linears", count_quantized_linears(model))
        ctx.observed.record("inference_block_len", length)
        ctx.quality, served_blocks, tokens = {}, 0, {}
        for split in ("validation", "test"):
            rows = [{"input_ids": b} for b in blocks(self._stream(ctx, ctx.extras[f"{split}_articles"]), length)]
            ppl, tokens[split] = self._perplexity(ctx, served, rows)
            ctx.quality[split] = {"perplexity": ppl,
                                  "unigram_perplexity": unigram_perplexity(ctx.extras["train_stream"], rows, ctx.extras["vocab"])}
            served_blocks += len(rows)
        ctx.observed.record("inference_compile", dict(compile_stats))
        ctx.samples["inference"] = served_blocks
        ctx.detail("tokens", tokens)
        ctx.detail("workload", f"validation + test articles in {served_blocks} blocks of {length} tokens")

    @staticmethod
    def _perplexity(ctx, served, rows) -> tuple[float, int]:
        batch_size, device = ctx.setting("inference.batch_size"), ctx.runtime.device
        total, count = 0.0, 0
        with torch.inference_mode():
            for s in range(0, len(rows), batch_size):
                ids = torch.tensor([r["input_ids"] for r in rows[s: s + batch_size]]).to(device)
                ctx.observed.record_max("inference_longest_input", ids.shape[1])
                ctx.observed.record_max("inference_batch_size_max", ids.shape[0])
                nll, n, logits = token_nll(served, ids)
                ctx.observed.record("inference_logits_dtype", str(logits.dtype))
                total, count = total + nll, count + n
        ctx.observed.record_max("inference_largest_split", len(rows))  # batches never span two splits
        return math.exp(total / max(count, 1)), count
