"""A Hugging Face Trainer script under the trial: the knobs act on its TrainingArguments, tokenizer
and model; the callback opens the training window and shows the knobs what the Trainer did; the
scores ``evaluate`` returns become quality; its checkpoints are counted and cleaned."""

from __future__ import annotations

import numpy as np
import pytest

from greenknobs.errors import KnobError
from greenknobs.knobs import get_knob
from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.pipeline import FunctionPipeline, execute_trial, in_process
from greenknobs.runtime import Runtime
from greenknobs.testing import fixtures as F

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    model_dir = F.make_tiny_model_dir(root / "model", layers=4)
    texts = [" ".join(vocab.split()[(i + j) % 6] for j in range(4 + i % 9)) for i in range(20) for vocab in F.TOPICS.values()]
    labels = [k for _ in range(20) for k in range(len(F.TOPICS))]
    return model_dir, datasets.Dataset.from_dict({"text": texts, "label": labels})


def compute_metrics(eval_pred):
    from sklearn.metrics import f1_score

    logits, labels = eval_pred
    return {"macro_f1": f1_score(labels, np.argmax(logits, -1), average="macro")}


def trainer_script(model_dir, data):
    """A Trainer script as people write it, with the lines greenknobs needs (see examples/hf-trainer-csv)."""
    def script(trial):
        trial.start_phase("data")
        tokenizer = trial.tokenizer(transformers.AutoTokenizer.from_pretrained(str(model_dir)))
        split = data.train_test_split(test_size=0.4, seed=0, stratify_by_column=None)
        rest = split["test"].train_test_split(test_size=0.5, seed=0)
        train, val, test = (d.map(lambda b: tokenizer(b["text"], truncation=True, max_length=64), batched=True)
                            for d in (split["train"], rest["train"], rest["test"]))
        trial.start_phase("model")
        model = trial.model(transformers.AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=3))
        args = trial.training_args(transformers.TrainingArguments(
            output_dir="out", learning_rate=1e-3, warmup_steps=0.2, per_device_train_batch_size=8,
            per_device_eval_batch_size=16, num_train_epochs=1, save_strategy="epoch", eval_strategy="no",
            use_cpu=True, report_to=[], disable_tqdm=True, seed=0))
        trainer = trial.trainer(transformers.Trainer(
            model=model, args=args, train_dataset=train, eval_dataset=val,
            data_collator=transformers.DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics))
        trainer.train()
        trial.start_phase("inference")
        trainer.evaluate()
        trial.start_phase("test")
        trainer.evaluate(test, metric_key_prefix="test")
    return script


def run(script, values, **kwargs):
    pipeline = FunctionPipeline({"function": in_process(script), "metric": "macro_f1", "direction": "maximize"})
    meter = CpuModelMeter()
    try:
        return execute_trial(pipeline, [(get_knob(n), v) for n, v in values.items()], meter,
                             Runtime("cpu", 2, 0), seed=0, **kwargs)
    finally:
        meter.close()


KNOBS = {"training.learning_rate": 3e-3, "system.train_batch_size": 4, "training.epochs": 2,
         "inference.batch_size": 8, "data.max_seq_len": 8, "model.layers_removed": 1,
         "inference.quantization": "dynamic_int8", "training.precision": "bf16", "system.threads": 1}


def test_a_trainer_script_comes_under_the_search_with_every_knob_verified(tiny, tmp_path):
    result, _ = run(trainer_script(*tiny), KNOBS, workdir=tmp_path / "trial")
    v = result.verifications
    assert v["training.learning_rate"]["bases"] == [3e-3] and v["training.learning_rate"]["first"] == 0.0  # warm-up
    assert v["training.epochs"]["trainer_epochs"] == 2
    assert v["system.train_batch_size"]["largest"] == 4
    assert v["data.max_seq_len"]["longest_fed"]["training"] <= 8
    assert v["model.layers_removed"]["blocks_ran"]["training"] == 3
    assert v["training.precision"]["via"] == "training_args" and v["training.precision"]["training_output"] == "torch.bfloat16"
    assert v["inference.quantization"]["quantized_linears_served"] > 0
    # evaluate() inside the phases became quality; the trivial guard came from the datasets' labels
    assert set(result.quality["validation"]) >= {"macro_f1", "trivial_macro_f1"}
    assert "macro_f1" in result.quality["test"]
    assert set(result.phases) == {"data", "model", "training", "inference"} and result.held_out is not None
    # its checkpoints went to the trial's folder, were counted, and removed (the default policy)
    assert result.artifacts["bytes"] > 0 and not result.artifacts["kept"] and not (tmp_path / "trial").exists()


@pytest.mark.parametrize("name", ["training.learning_rate", "system.train_batch_size", "training.epochs",
                                  "training.precision"])
def test_a_trainer_knob_with_its_mechanism_off_fails_verification(tiny, name):
    knob = type(get_knob(name))
    knob.acting = False
    try:
        with pytest.raises(KnobError, match=name):
            run(trainer_script(*tiny), {name: KNOBS[name]})
    finally:
        del knob.acting
