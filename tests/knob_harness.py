"""Run the real built-in pipelines on tiny data and tiny models, for knob tests.

classification: a 4-block, 32-wide BERT (random weights, saved with the MiniLM tokenizer) on 90
short texts in 3 topics (with exact and near duplicates so de-duplication has work to do).
causal LM: a 4-block LLaMA-style decoder on 60 BBC News articles.
Every knob the pipeline honours runs at its baseline unless overridden.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from greenknobs.knobs import get_knob
from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.pipeline import run_trial

WORDS = {"sport": "match goal team score win league", "tech": "chip software phone data cloud code",
         "money": "bank market shares profit price trade"}


def write_tiny_classifier(path: Path) -> Path:
    from greenknobs import hf

    if not (path / "config.json").is_file():
        model = hf.tiny_bert_classifier(num_labels=3, layers=4, hidden=32, vocab=30522)
        hf.save_pretrained(model, path)
        hf.load_tokenizer(hf.bundled_minilm_dir()).save_pretrained(str(path))
    return path


def write_texts(path: Path) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["body", "topic"])
        for i in range(30):
            for topic, vocab in WORDS.items():
                toks = vocab.split()
                text = " ".join(toks[(i + j) % len(toks)] for j in range(5 + i % 13))
                if i % 10 == 3:  # a near duplicate of an earlier text: one word appended
                    text = " ".join(toks[(i - 1 + j) % len(toks)] for j in range(5 + (i - 1) % 13)) + " extra"
                w.writerow([text, topic])
    return path


def classification_options(model_dir: Path, csv_path: Path) -> dict[str, Any]:
    return {"model": str(model_dir), "teacher": "model",
            "dataset": {"path": str(csv_path), "text_column": "body", "label_column": "topic"}}


LM_OPTIONS = {"max_examples": 60, "vocab_size": 500, "hidden_size": 32, "layers": 4, "heads": 2, "eval_seq_len": 32}
TEST_BASELINE = {"data.max_seq_len": 32, "training.learning_rate": 1e-3,  # tiny inputs; a rate a tiny model learns at
                 "system.threads": 1}  # the CI box is shared: one thread is several times faster than two there


def run(pipeline, overrides: dict[str, Any], runtime, seed: int = 0):
    values = {name: get_knob(name).default for name in pipeline.knobs}
    values.update({k: v for k, v in TEST_BASELINE.items() if k in values})
    values.update(overrides)
    return run_trial(pipeline, [(get_knob(n), v) for n, v in values.items()], CpuModelMeter(), runtime, seed)
