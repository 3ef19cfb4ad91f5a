"""Tiny, real fixtures for tests and benchmarks: a config-built BERT saved like a hub model, and a
small labelled CSV. Trials on them take well under a second, yet run every real code path."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

TOPICS = {"sport": "match goal team score win league", "tech": "chip software phone data cloud code",
          "money": "bank market shares profit price trade"}


def make_tiny_model_dir(path: Path, layers: int = 2, hidden: int = 32) -> Path:
    """A random-weight BERT classifier with the real MiniLM tokenizer, saved with save_pretrained."""
    from greenknobs import hf

    path.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(hf.tiny_bert_classifier(num_labels=len(TOPICS), layers=layers, hidden=hidden, vocab=30522), path)
    hf.load_tokenizer(hf.bundled_minilm_dir()).save_pretrained(str(path))
    return path


def make_tiny_csv(path: Path, per_topic: int = 30) -> Path:
    """``per_topic`` short texts in each of 3 topics (columns body, topic); learnable in a few steps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["body", "topic"])
        for i in range(per_topic):
            for topic, vocab in TOPICS.items():
                toks = vocab.split()
                w.writerow([" ".join(toks[(i + j) % len(toks)] for j in range(5 + i % 7)), topic])
    return path


def tiny_experiment(workdir: Path, model_dir: Path, csv_path: Path, **overrides: Any) -> dict[str, Any]:
    """An experiment dict over the tiny model and CSV, with storage and MLflow under ``workdir``."""
    exp: dict[str, Any] = {
        "name": "tiny",
        "pipeline": {"name": "text-classification", "model": str(model_dir),
                     "dataset": {"path": str(csv_path), "text_column": "body", "label_column": "topic"}},
        "knobs": {"data.max_seq_len": {"default": 32, "choices": [8, 16, 32]},
                  "model.layers_removed": {"default": 0, "low": 0, "high": 1},
                  "training.learning_rate": {"default": 1e-3, "low": 1e-4, "high": 3e-3, "log": True}},
        "constraints": {"min_quality_retained": 0.5, "beat_trivial_by": None},
        "budget": {"trials": 4},
        "sampler": "random",
        "meter": "cpu-model",
        "storage": f"sqlite:///{workdir}/optuna.db",
        "mlflow_uri": f"sqlite:///{workdir}/mlflow.db",
    }
    exp.update(overrides)
    return exp
