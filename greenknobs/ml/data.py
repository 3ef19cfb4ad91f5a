"""Choosing training examples: seeded stratified subsets and de-duplication, as the data knobs ask."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from greenknobs.ml import dedup


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
    mode = ctx.setting("data.dedup")
    drop = set(dedup.duplicates([r["text"] for r in ctx.train], mode))
    ctx.observed.record("dedup_mode", mode)
    ctx.observed.record("dedup_removed", len(drop))
    ctx.train = [r for i, r in enumerate(ctx.train) if i not in drop]
    ctx.training_texts = [r["text"] for r in ctx.train]  # what training draws from (a LM cuts blocks of these)


def subsample_training(ctx) -> None:
    """Keep the stratified, seeded fraction ``data.train_fraction`` of ``ctx.train``."""
    ctx.observed.record("train_examples_available", len(ctx.train))
    ctx.train = stratified_subset(ctx.train, ctx.setting("data.train_fraction"), ctx.seed)
    ctx.observed.record("train_examples_kept", len(ctx.train))
    if ctx.train and "text" in ctx.train[0]:  # rows are texts (not LM blocks): training sees exactly these
        ctx.training_texts = [r["text"] for r in ctx.train]


def select_training_examples(ctx) -> None:
    """The data knobs that choose training examples, in their one meaningful order: de-duplicate,
    then subsample what is left. Pipelines call this right after ``ctx.apply_knobs()``."""
    deduplicate_training(ctx)
    subsample_training(ctx)


def drop_duplicate_texts(examples: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Keep the first of every group of texts that are equal after lower-casing and collapsing
    whitespace. Run on the whole corpus *before* splitting, so no text is in two splits (a test
    article that is also a training article would flatter the held-out score)."""
    drop = set(dedup.duplicates([e["text"] for e in examples], "exact"))
    return [e for i, e in enumerate(examples) if i not in drop], len(drop)


def carve_stopping_rows(train: list[dict[str, Any]], seed: int, fraction: float = 0.1,
                        minimum: int = 8) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows left, rows early stopping scores on): a seeded slice of the training split,
    so early stopping never reads validation -- only the search does."""
    n = max(minimum, round(len(train) * fraction))
    if n >= len(train):
        raise ValueError(f"early stopping needs rows carved from training: {len(train)} rows are too few")
    order = list(range(len(train)))
    random.Random(seed + 7).shuffle(order)
    held = set(order[:n])
    return [r for i, r in enumerate(train) if i not in held], [r for i, r in enumerate(train) if i in held]
