"""Quality metrics and splits (scikit-learn is imported here only)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    return float(accuracy_score(y_true, y_pred))


def majority_class_scores(y_train: Sequence[int], y_true: Sequence[int]) -> dict[str, float]:
    """What a model that always predicts the most frequent training label would score."""
    majority = Counter(y_train).most_common(1)[0][0]
    pred = [majority] * len(y_true)
    return {"majority_macro_f1": macro_f1(y_true, pred), "majority_accuracy": accuracy(y_true, pred)}


def stratified_split(examples: list[dict[str, Any]], fractions: tuple[float, float, float], seed: int):
    """Seeded split of examples (dicts with a ``label``) into train/validation/test, stratified by label."""
    train_f, val_f, test_f = fractions
    labels = [e["label"] for e in examples]
    rest, test = train_test_split(examples, test_size=test_f, stratify=labels, random_state=seed)
    if val_f <= 0:
        return rest, [], test
    train, val = train_test_split(rest, test_size=val_f / (train_f + val_f),
                                  stratify=[e["label"] for e in rest], random_state=seed)
    return train, val, test
