"""Data-phase knobs: which examples, how long each one is, how they are batched and tokenised."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from greenknobs.knobs import watching
from greenknobs.knobs.base import ObjectKnob, SettingKnob, Space, register
from greenknobs.ml import dedup, instruments


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


@dataclass
class SeqLenEvidence:
    longest_fed: dict[str, int] = field(default_factory=dict)  # phase -> longest real sequence a forward pass received
    tokenizer_outputs: int = 0  # texts the handed-over tokenizer encoded
    at_limit: int = 0  # of which the limit cut (their length reached it)
    via: str | None = None  # "tokenizer" (every call truncates) or "code" (the code read the value)


@register
class MaxSeqLen(ObjectKnob):
    name = "data.max_seq_len"
    default = 512
    space = Space(choices=(32, 64, 128, 256, 512))
    bounds = (8, None)
    example = 16
    description = ("Truncate every input to this many tokens (attention cost grows with its square): every call of the "
                   "tokenizer handed to trial.tokenizer() truncates to it, or the code reads trial.knob(...).")
    verifies = ("longest real sequence a training or serving forward pass received (a forward pre-hook): never above "
                "the limit, and at it when the tokenizer cut inputs")
    acts_on = ("tokenizer",)
    watches = ("model",)
    needs = (("tokenizer", "model"), ("asked", "model"))
    needs_hint = "the tokenizer, trial.tokenizer(tokenizer) (or code that reads trial.knob('data.max_seq_len')), and the model"
    needed_in = "training"
    evidence_type = SeqLenEvidence

    def handed(self, kind, obj, value, trial):
        ev = trial.evidence(self)
        if kind == "tokenizer":
            trial.scratch(self)["watch"] = instruments.cap_tokenizer(obj, value if trial.may_act(self, kind, obj) else None)
            ev.via = "tokenizer"
        if watching.once(trial, self):
            def fn(phase, module, args, kwargs):
                n = instruments.sequence_tokens(args, kwargs)
                if n is not None:
                    ev.longest_fed[phase] = max(ev.longest_fed.get(phase, 0), n)

            watching.on_forward(trial, ("training", *watching.SERVING), fn)
        return None

    def phase_ended(self, phase, value, trial):
        watch = trial.scratch(self).get("watch")
        if watch is not None:
            ev = trial.evidence(self)
            ev.tokenizer_outputs, ev.at_limit = watch.outputs, watch.at_limit

    def judge(self, value, ev, ctx):
        if not ev.longest_fed:
            return "no forward pass with token inputs was watched"
        longest = max(ev.longest_fed.values())
        if longest > value:
            return f"an input of {longest} tokens reached the model"
        if ev.at_limit and longest < value:  # the tokenizer cut inputs at the limit: some must reach the model at it
            return f"{ev.at_limit} inputs were cut at {value} tokens, yet the longest fed was {longest}"
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
