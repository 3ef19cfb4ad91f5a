"""Tiny, real fixtures for tests and benchmarks: a config-built BERT saved like a hub model, small
labelled CSVs, a tiny experiment, and a one-call trial runner. Trials on them take about a
second, yet run every real code path of the built-in pipelines."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

TOPICS = {"sport": "match goal team score win league", "tech": "chip software phone data cloud code",
          "money": "bank market shares profit price trade"}
# Knob values every tiny trial starts from: tiny inputs; a rate a tiny model learns at; one thread
# (on a shared 2-core box one thread is several times faster than two for models this small).
TINY_BASELINE = {"data.max_seq_len": 32, "training.learning_rate": 1e-3, "system.threads": 1}
LM_OPTIONS = {"max_examples": 60, "vocab_size": 500, "hidden_size": 32, "layers": 4, "heads": 2, "eval_seq_len": 32}


def make_tiny_model_dir(path: Path, layers: int = 2, hidden: int = 32) -> Path:
    """A random-weight BERT classifier with the real MiniLM tokenizer, saved with save_pretrained."""
    from greenknobs.ml import hf

    if not (path / "config.json").is_file():
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


def make_tiny_texts_with_duplicates(path: Path) -> Path:
    """90 texts in 3 topics with exact and near duplicates, so de-duplication has work to do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["body", "topic"])
        for i in range(30):
            for topic, vocab in TOPICS.items():
                toks = vocab.split()
                text = " ".join(toks[(i + j) % len(toks)] for j in range(5 + i % 13))
                if i % 10 == 3:  # a near duplicate of an earlier text: one word appended
                    text = " ".join(toks[(i - 1 + j) % len(toks)] for j in range(5 + (i - 1) % 13)) + " extra"
                w.writerow([text, topic])
    return path


def classification_options(model_dir: Path, csv_path: Path) -> dict[str, Any]:
    """text-classification options over a tiny model dir and CSV (the model also teaches distillation)."""
    return {"model": str(model_dir), "teacher": "model",
            "dataset": {"path": str(csv_path), "text_column": "body", "label_column": "topic"}}


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


def run_knobs(pipeline, overrides: dict[str, Any], runtime, seed: int = 0, meter=None):
    """One trial of ``pipeline`` with every knob it honours at its default, TINY_BASELINE, then ``overrides``."""
    return run_knobs_with_context(pipeline, overrides, runtime, seed, meter)[0]


def run_knobs_with_context(pipeline, overrides: dict[str, Any], runtime, seed: int = 0, meter=None):
    """``run_knobs``, also returning the trial context the phases left (for re-judging evidence)."""
    from greenknobs.knobs import get_knob
    from greenknobs.meters.cpu_model import CpuModelMeter
    from greenknobs.pipeline import execute_trial

    values = {name: get_knob(name).default for name in pipeline.knobs}
    values.update({k: v for k, v in TINY_BASELINE.items() if k in values})
    values.update(overrides)
    meter = meter or CpuModelMeter()
    try:
        return execute_trial(pipeline, [(get_knob(n), v) for n, v in values.items()], meter, runtime, seed)
    finally:
        meter.close()
