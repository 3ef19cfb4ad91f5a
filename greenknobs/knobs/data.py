"""Data-phase knobs: which examples, how long each one is, how they are batched and tokenised."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from greenknobs import dedup
from greenknobs.errors import ConfigError
from greenknobs.knobs.base import Knob, Space, register


def stratified_subset(examples: list[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """Keep ``fraction`` of the examples, the same fraction of each label (seeded)."""
    if fraction >= 1.0:
        return list(examples)
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[ex.get("label")].append(i)
    rng = random.Random(seed)
    keep: list[int] = []
    for label in sorted(groups, key=str):
        idx = groups[label]
        rng.shuffle(idx)
        keep.extend(idx[: max(1, round(len(idx) * fraction))])
    return [examples[i] for i in sorted(keep)]


def deduplicate_training(ctx) -> None:
    """Drop duplicate training texts as ``data.dedup`` asks (a no-op at its baseline, "off")."""
    mode = ctx.setting("dedup")
    drop = set(dedup.duplicates([r["text"] for r in ctx.train], mode))
    ctx.observed.record("dedup_mode", mode)
    ctx.observed.record("dedup_removed", len(drop))
    ctx.train = [r for i, r in enumerate(ctx.train) if i not in drop]
    ctx.training_texts = [r["text"] for r in ctx.train]  # what training draws from (a LM cuts blocks of these)


def subsample_training(ctx) -> None:
    """Keep the stratified, seeded fraction ``data.train_fraction`` of ``ctx.train``."""
    ctx.observed.record("train_examples_available", len(ctx.train))
    ctx.train = stratified_subset(ctx.train, ctx.setting("train_fraction"), ctx.seed)
    ctx.observed.record("train_examples_kept", len(ctx.train))
    if ctx.train and "text" in ctx.train[0]:  # rows are texts (not LM blocks): training sees exactly these
        ctx.training_texts = [r["text"] for r in ctx.train]


def select_training_examples(ctx) -> None:
    """The data knobs that choose training examples, in their one meaningful order: de-duplicate,
    then subsample what is left. Pipelines call this right after ``ctx.apply_knobs()``."""
    deduplicate_training(ctx)
    subsample_training(ctx)


@register
class TrainFraction(Knob):
    name = "data.train_fraction"
    phase = "data"
    default = 1.0
    space = Space(low=0.1, high=1.0)
    value_type = float
    description = "Train on a stratified, seeded fraction of the training split."
    verifies = "examples the training loop actually consumed per epoch"

    def validate_value(self, value: float, key: str) -> None:
        if not 0.0 < value <= 1.0:
            raise ConfigError(key, f"must be in (0, 1], got {value}")

    def apply(self, ctx, value: float) -> None:
        ctx.settings["train_fraction"] = value  # applied by select_training_examples, after de-duplication

    def verify(self, ctx, value: float) -> dict[str, Any]:
        available = ctx.observed.require("train_examples_available", self.name)
        used = ctx.observed.require("train_examples_per_epoch", self.name)
        kept = ctx.observed.require("train_examples_kept", self.name)
        self.expect(used == kept, f"training consumed {used} examples per epoch, expected {kept}")
        self.expect(abs(used / available - value) <= 0.02 + 5 / available,
                    f"{used}/{available} examples is not a fraction of {value}")
        return {"train_examples_used": used, "train_examples_available": available}


@register
class MaxSeqLen(Knob):
    name = "data.max_seq_len"
    phase = "data"
    default = 512
    space = Space(choices=(32, 64, 128, 256, 512))
    value_type = int
    description = "Truncate every input to this many tokens (attention cost grows with its square)."
    verifies = "longest input the model was fed, in tokens"

    def validate_value(self, value: int, key: str) -> None:
        if value < 8:
            raise ConfigError(key, f"must be at least 8 tokens, got {value}")

    def apply(self, ctx, value: int) -> None:
        ctx.settings["max_seq_len"] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        longest = ctx.observed.require("longest_input_tokens", self.name)
        self.expect(longest <= value, f"an input of {longest} tokens reached the model")
        return {"longest_input_tokens": longest, "inputs_cut_at_limit": ctx.observed.get("truncated_train_inputs")}


@register
class Dedup(Knob):
    name = "data.dedup"
    phase = "data"
    default = "off"
    space = Space(choices=("off", "exact", "near"))
    value_type = str
    description = (f"Drop duplicate training texts: exact (after normalising case and spaces) or near "
                   f"(word 3-gram Jaccard >= {dedup.NEAR_THRESHOLD}, MinHash candidates, exact confirmation).")
    verifies = "texts removed; re-checks that no two texts the training loop consumed are duplicates"

    def apply(self, ctx, value: str) -> None:
        ctx.settings["dedup"] = value

    def verify(self, ctx, value: str) -> dict[str, Any]:
        mode = ctx.observed.require("dedup_mode", self.name)
        removed = ctx.observed.require("dedup_removed", self.name)
        self.expect(mode == value, f"the pipeline de-duplicated with {mode!r}")
        if value == "off":
            self.expect(removed == 0, f"{removed} texts removed with de-duplication off")
        else:  # the evidence is the training set itself: run the detector again on what was trained on
            left = dedup.duplicates(ctx.training_texts, value)
            self.expect(not left, f"{len(left)} duplicates still in the training set")
        return {"dedup_removed": removed, "training_texts_after": len(ctx.training_texts)}


@register
class Padding(Knob):
    name = "data.padding"
    phase = "data"
    default = "dynamic"
    space = Space(choices=("dynamic", "length_bucketed", "max_length"))
    value_type = str
    description = ("How training batches are padded: dynamic (shuffled, each batch padded to its longest), "
                   "length_bucketed (batches of similar length, shuffled batch order: least padding), "
                   "max_length (every batch padded to data.max_seq_len, as a fixed-shape pipeline does).")
    verifies = "padding share of training tokens; batch widths vs their longest input; bucket overlap"

    def apply(self, ctx, value: str) -> None:
        ctx.settings["padding"] = value

    def verify(self, ctx, value: str) -> dict[str, Any]:
        stats = ctx.observed.require("train_padding_stats", self.name)
        if value == "max_length":
            limit = ctx.setting("max_seq_len")
            self.expect(stats["min_width"] == stats["max_width"] == limit,
                        f"batch widths {stats['min_width']}..{stats['max_width']}, expected all {limit}")
        else:
            self.expect(stats["wider_than_longest"] == 0, f"{stats['wider_than_longest']} batches padded past their longest input")
        if value == "length_bucketed":
            self.expect(stats["bucket_overlaps"] == 0, f"{stats['bucket_overlaps']} batches overlap in length: not bucketed")
        return {"pad_fraction": stats["pad_fraction"], "batches": stats["batches"], "bucket_overlaps": stats["bucket_overlaps"]}


@register
class TokenizerCache(Knob):
    name = "data.tokenizer_cache"
    phase = "data"
    default = False
    space = Space(choices=(False, True))
    value_type = bool
    description = "Reuse token ids from an on-disk cache across trials (same tokenizer and max length); tokenise only new texts."
    verifies = "texts served from the cache vs tokenised this trial; the cache file exists"

    def apply(self, ctx, value: bool) -> None:
        ctx.settings["tokenizer_cache"] = value

    def verify(self, ctx, value: bool) -> dict[str, Any]:
        from pathlib import Path

        stats = ctx.observed.require("tokenization", self.name)
        if not value:
            self.expect(stats["mode"] == "off" and stats["hits"] == 0, f"cache used although off: {stats}")
        else:
            self.expect(stats["mode"] in ("hit", "miss"), f"cache not consulted: {stats}")
            self.expect(Path(stats["file"]).is_file(), f"cache file {stats['file']} missing")
        return {k: v for k, v in stats.items() if k != "file"}
