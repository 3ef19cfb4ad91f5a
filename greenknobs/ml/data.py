"""Choosing examples: seeded stratified subsets, de-duplication before the split (exact, or near
as the experiment asks) with the near-duplicates left across the split reported, and the
training-split de-duplication the data knobs ask for."""

from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict
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


DEDUP_MODES = ("exact", "near")  # before the split; "exact" is what every pipeline did before near existed
SPLIT_NAMES = ("train", "validation", "test")


def label_conflicts(examples: list[dict[str, Any]], limit: int = 5) -> dict[str, Any]:
    """Texts that are equal after normalisation but carry different labels. De-duplication keeps
    the first copy, so its label wins: say which, instead of choosing silently."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        groups[dedup.normalise(e["text"])].append(i)
    conflicts: list[dict[str, Any]] = []
    for idx in groups.values():
        labels = [examples[i].get("label") for i in idx]
        if len(set(map(repr, labels))) > 1:
            conflicts.append({"rows": idx, "labels": labels, "kept_label": labels[0],
                              "text": " ".join(examples[idx[0]]["text"].split())[:80]})
    return {"texts": len(conflicts), "rows": sum(len(c["rows"]) for c in conflicts), "first": conflicts[:limit]}


def dedup_before_split(examples: list[dict[str, Any]], mode: str = "exact",
                       threshold: float = dedup.NEAR_THRESHOLD) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Drop duplicates from the whole corpus *before* it is split, so no text is in two splits:
    ``exact`` drops texts equal after normalisation, ``near`` also those at word 3-gram Jaccard >=
    ``threshold`` to an earlier kept text. The first copy stays. Returns the kept examples and the
    facts: what was dropped, and the exact duplicates whose labels disagree (the first label kept)."""
    if mode not in DEDUP_MODES:
        raise ValueError(f"unknown de-duplication mode before the split {mode!r}; known: {', '.join(DEDUP_MODES)}")
    facts: dict[str, Any] = {"mode": mode, "label_conflicts": label_conflicts(examples)}
    kept, facts["exact_dropped"] = drop_duplicate_texts(examples)
    facts["near_dropped"] = 0
    if mode == "near":
        facts["threshold"] = dedup.check_threshold(threshold)
        pairs = dedup.near_pairs([e["text"] for e in kept], threshold)
        facts["near_pairs"] = len(pairs)
        facts["near_label_conflicts"] = sum(kept[p.first].get("label") != kept[p.second].get("label") for p in pairs)
        drop = set(dedup.later_copies(pairs))
        kept = [e for i, e in enumerate(kept) if i not in drop]
        facts["near_dropped"] = len(drop)
    facts["rows_kept"] = len(kept)
    return kept, facts


def split_assignment(splits: dict[str, list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The splits' examples in one list, and beside each the name of the split it is in."""
    examples: list[dict[str, Any]] = []
    names: list[str] = []
    for name, rows in splits.items():
        examples.extend(rows)
        names.extend([name] * len(rows))
    return examples, names


def _pair_name(a: str, b: str, order: list[str]) -> str:
    first, second = sorted((a, b), key=lambda s: (order.index(s) if s in order else len(order), s))
    return f"{first}-{second}"


def near_duplicate_report(examples: list[dict[str, Any]], assignment: list[str],
                          threshold: float = dedup.NEAR_THRESHOLD, limit: int = 5) -> dict[str, Any]:
    """Near-duplicate pairs (word 3-gram Jaccard >= ``threshold``) among ``examples``, counted by the
    pair of splits their two texts are in (``assignment[i]`` names example i's split): train-train,
    train-validation, train-test, validation-validation, validation-test, test-test. A pair across
    splits lets the held-out score see a text the model was trained on (or selected on); a pair
    whose labels differ is counted too. Every split pair is listed, zeros included."""
    if len(assignment) != len(examples):
        raise ValueError(f"{len(examples)} examples but {len(assignment)} split names")
    order = [s for s in SPLIT_NAMES if s in assignment] + sorted(set(assignment) - set(SPLIT_NAMES))
    pairs = dedup.near_pairs([e["text"] for e in examples], threshold)
    by_pair = {_pair_name(a, b, order): 0 for a, b in itertools.combinations_with_replacement(order, 2)}
    conflicts: Counter[str] = Counter()
    involved: set[int] = set()
    shown: list[dict[str, Any]] = []
    for p in pairs:
        name = _pair_name(assignment[p.first], assignment[p.second], order)
        by_pair[name] += 1
        involved.update((p.first, p.second))
        differ = examples[p.first].get("label") != examples[p.second].get("label")
        if differ:
            conflicts[name] += 1
        if len(shown) < limit and assignment[p.first] != assignment[p.second]:
            shown.append({"splits": name, "jaccard": round(p.jaccard, 4), "labels_differ": differ,
                          "texts": [" ".join(examples[i]["text"].split())[:60] for i in (p.first, p.second)]})
    across = sum(n for name, n in by_pair.items() if name.split("-")[0] != name.split("-")[1])
    return {"threshold": dedup.check_threshold(threshold), "method": dedup.method(threshold), "rows": len(examples),
            "split_sizes": dict(Counter(assignment)), "pairs": len(pairs), "across_splits": across,
            "by_split_pair": by_pair, "examples_involved": len(involved),
            "label_conflicts": sum(conflicts.values()), "label_conflicts_by_split_pair": dict(conflicts),
            "first_across_splits": shown}


def describe_near_duplicates(report: dict[str, Any]) -> str:
    """One line: pairs at the threshold, how many cross the split, the count for each split pair."""
    pairs = ", ".join(f"{name} {n}" for name, n in report["by_split_pair"].items())
    conflicts = f"; {report['label_conflicts']} with different labels" if report["label_conflicts"] else ""
    return (f"{report['pairs']} pairs at word 3-gram Jaccard >= {report['threshold']:g} among {report['rows']} rows, "
            f"{report['across_splits']} across splits ({pairs}){conflicts}")


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
