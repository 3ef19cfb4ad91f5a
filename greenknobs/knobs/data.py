"""Data-phase knobs: which examples, how long each one is, how they are batched and tokenised."""

from __future__ import annotations

from pathlib import Path

from greenknobs.knobs.base import SettingKnob, Space, register
from greenknobs.ml import dedup


@register
class TrainFraction(SettingKnob):
    name = "data.train_fraction"
    default = 1.0
    space = Space(low=0.1, high=1.0)
    bounds = (1e-9, 1.0)
    example = 0.5
    description = "Train on a stratified, seeded fraction of the training split."
    verifies = "examples the training loop actually consumed per epoch"
    evidence = ("train_examples_available", "train_examples_per_epoch", "train_examples_kept")

    def judge(self, value, seen, ctx):
        used, kept, available = seen["train_examples_per_epoch"], seen["train_examples_kept"], seen["train_examples_available"]
        if used != kept:
            return f"training consumed {used} examples per epoch, expected {kept}"
        if abs(used / available - value) > 0.02 + 5 / available:
            return f"{used}/{available} examples is not a fraction of {value}"
        return None

    def report(self, value, seen, ctx):
        return {"train_examples_used": seen["train_examples_per_epoch"], "train_examples_available": seen["train_examples_available"]}


@register
class MaxSeqLen(SettingKnob):
    name = "data.max_seq_len"
    default = 512
    space = Space(choices=(32, 64, 128, 256, 512))
    bounds = (8, None)
    example = 16
    description = "Truncate every input to this many tokens (attention cost grows with its square)."
    verifies = "longest input the model was fed, in tokens: never above the limit, and at it when inputs reach it"
    evidence = ("longest_input_tokens", "truncated_train_inputs")

    def judge(self, value, seen, ctx):
        longest = seen["longest_input_tokens"]
        if longest > value:
            return f"an input of {longest} tokens reached the model"
        if seen["truncated_train_inputs"] and longest < value:  # inputs were cut at the limit: some must reach it
            return f"{seen['truncated_train_inputs']} inputs were cut at {value} tokens, yet the longest fed was {longest}"
        return None



@register
class Dedup(SettingKnob):
    name = "data.dedup"
    default = "off"
    space = Space(choices=("off", "exact", "near"))
    example = "near"
    description = (f"Drop duplicate training texts: exact (after normalising case and spaces) or near "
                   f"(word 3-gram Jaccard >= {dedup.NEAR_THRESHOLD}, MinHash candidates, exact confirmation).")
    verifies = "texts removed; re-checks that no two texts the training loop consumed are duplicates"
    evidence = ("dedup_mode", "dedup_removed")

    def judge(self, value, seen, ctx):
        if seen["dedup_mode"] != value:
            return f"the pipeline de-duplicated with {seen['dedup_mode']!r}"
        if value == "off":
            return f"{seen['dedup_removed']} texts removed with de-duplication off" if seen["dedup_removed"] else None
        # the evidence is the training set itself: run the detector again on what was trained on
        left = dedup.duplicates(ctx.training_texts, value)
        return f"{len(left)} duplicates still in the training set" if left else None

    def report(self, value, seen, ctx):
        return {"dedup_removed": seen["dedup_removed"], "training_texts_after": len(ctx.training_texts)}


@register
class Padding(SettingKnob):
    name = "data.padding"
    default = "dynamic"
    space = Space(choices=("dynamic", "length_bucketed", "max_length"))
    example = "length_bucketed"
    description = ("How training batches are padded: dynamic (shuffled, each batch padded to its longest), "
                   "length_bucketed (batches of similar length, shuffled batch order: least padding), "
                   "max_length (every batch padded to data.max_seq_len, as a fixed-shape pipeline does).")
    verifies = "padding share of training tokens; batch widths vs their longest input; bucket overlap"
    evidence = ("train_padding_stats",)

    def judge(self, value, seen, ctx):
        stats = seen["train_padding_stats"]
        if value == "max_length":
            limit = ctx.setting("data.max_seq_len")
            if not stats["min_width"] == stats["max_width"] == limit:
                return f"batch widths {stats['min_width']}..{stats['max_width']}, expected all {limit}"
        elif stats["wider_than_longest"]:
            return f"{stats['wider_than_longest']} batches padded past their longest input"
        if value == "length_bucketed" and stats["bucket_overlaps"]:
            return f"{stats['bucket_overlaps']} batches overlap in length: not bucketed"
        return None

    def report(self, value, seen, ctx):
        stats = seen["train_padding_stats"]
        return {k: stats[k] for k in ("pad_fraction", "batches", "bucket_overlaps")}


@register
class TokenizerCache(SettingKnob):
    name = "data.tokenizer_cache"
    default = False
    space = Space(choices=(False, True))
    example = True
    description = "Reuse token ids from an on-disk cache across trials (same tokenizer and max length); tokenise only new texts."
    verifies = "texts served from the cache vs tokenised this trial; the cache file exists"
    evidence = ("tokenization",)

    def judge(self, value, seen, ctx):
        stats = seen["tokenization"]
        if not value:
            return f"cache used although off: {stats}" if stats["mode"] != "off" or stats["hits"] else None
        if stats["mode"] not in ("hit", "miss"):
            return f"cache not consulted: {stats}"
        return None if Path(stats["file"]).is_file() else f"cache file {stats['file']} missing"

    def report(self, value, seen, ctx):
        return {k: v for k, v in seen["tokenization"].items() if k != "file"}
