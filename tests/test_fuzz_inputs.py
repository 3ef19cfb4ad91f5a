"""Property-based: whatever a user puts in an experiment file or a dataset file, greenknobs either
accepts it or says what is wrong in one line naming the key -- a ConfigError, never a traceback.

Experiment files: the default experiment with values at random keys replaced by random YAML values,
keys deleted, unknown keys added, and its text broken (truncated, garbage or non-UTF-8 bytes
inserted). Dataset files: a small CSV / JSONL truncated, with garbage bytes, a column dropped,
labels or texts emptied, fields of the wrong type -- checked by ``check_inputs`` as
``greenknobs validate`` does before any trial. Deterministic (``derandomize``) so CI sees the same
examples every run; a few ``greenknobs validate`` subprocesses check the command's exit code.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenknobs.config import TOP_LEVEL, Experiment, check_inputs, load_experiment, parse_experiment
from greenknobs.errors import ConfigError
from greenknobs.testing.fixtures import TOPICS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "experiments" / "bbc-news-minilm.yaml"
BASE_TEXT = DEFAULT.read_text()
BASE = yaml.safe_load(BASE_TEXT)

# Deterministic (the same examples on every run and machine), no example database written to the
# checkout, no deadline (a shared 2-core CI box is slow at times); about 320 examples in all.
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True, max_examples=100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def outcome(call) -> str:
    """'ok' or 'error' (a clean ConfigError); anything else escapes and fails the property."""
    try:
        result = call()
    except ConfigError as exc:
        message = str(exc)
        assert message.strip(), "an empty error message"
        assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
        assert len(message) < 2000, f"an unreadably long message ({len(message)} chars)"
        assert isinstance(exc.key, str)
        return "error"
    assert isinstance(result, Experiment) or result is None
    return "ok"


# -- random YAML values ------------------------------------------------------------------------
KNOWN_KEYS = sorted({*TOP_LEVEL, *BASE["knobs"], "default", "choices", "low", "high", "log", "step", "class", "name",
                     "params", "path", "text_column", "label_column", "trials", "timeout_s", "metric", "direction",
                     "energy", "quality", "scope", "dataset", "model", "split", "train", "validation", "test",
                     "max_examples", "teacher", "idle_baseline_s", "spread_warning", "country_iso_code", "region",
                     "pue", "min_quality_retained", "beat_trivial_by", "pipeline"})
AWKWARD_STRINGS = ["", " ", "~", "~nosuchuser/model", "x" * 300, "a:b", ".x:Y", ":Y", "x:", "os:path", "no.such:Thing",
                   "bbc-news", "minilm", "scratch", "auto", "cpu", "cuda", "fp32", "bf16", "none", "tpe", "grid", "total",
                   "macro_f1", "perplexity", "maximize", "minimize", "text-classification", "causal-lm", "cpu-model",
                   "sqlite:///x.db", "postgresql://u:p@127.0.0.1:1/db", "1e3", "-1", "nan", "\x00", "a\nb", "é", "GBR",
                   "/", "/etc/passwd", "/dev/null", ".", "..", "model", "\t"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**6), max_value=10**6), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(AWKWARD_STRINGS),
    st.sampled_from(KNOWN_KEYS), st.dates(),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8), st.integers(-3, 3), st.booleans(), st.none())
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(keys, inner, max_size=4)), max_leaves=8)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a YAML tree (dict keys and list indices)."""
    found = []
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return found
    for k, v in items:
        found.append((*prefix, k))
        found.extend(paths(v, (*prefix, k)))
    return found


def containers(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths of every mapping in a YAML tree (where a key can be added)."""
    found = [prefix] if isinstance(node, dict) else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        found.extend(containers(v, (*prefix, k)))
    return found


def at(node: Any, path: tuple) -> Any:
    for k in path:
        node = node[k]
    return node


@st.composite
def mutated_experiments(draw) -> Any:
    raw = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if op == "add":
            where = draw(st.sampled_from(containers(raw)))
            at(raw, where)[draw(keys)] = draw(values)
            continue
        every = paths(raw)
        if not every:
            break
        path = draw(st.sampled_from(every))
        parent = at(raw, path[:-1])
        if op == "set":
            parent[path[-1]] = draw(values)
        else:
            del parent[path[-1]]
    return raw


@FUZZ
@given(mutated_experiments())
def test_mutated_experiment_loads_or_fails_cleanly(raw):
    outcome(lambda: parse_experiment(raw, "fuzz.yaml"))


@settings(FUZZ, max_examples=40)
@given(values)
def test_any_yaml_document_loads_or_fails_cleanly(raw):
    outcome(lambda: parse_experiment(raw, "fuzz.yaml"))


# -- broken YAML text ----------------------------------------------------------------------------
YAML_JUNK = st.one_of(st.text(alphabet=":{}[]'\"\t&*!%@`|>-?#,\n \\xé", max_size=12),
                      st.sampled_from(["!!python/object/apply:os.system ['true']\n", "*undefined_alias", "&a [*a]",
                                       "? [a, b]\n: 1\n", "{" * 50, "[" * 2000, "key: &x\n", "%YAML 9.9\n---\n",
                                       "\t", "\n---\nsecond: document\n", "2024-13-45", "\ufeff"]))
BAD_BYTES = st.sampled_from([b"\xff\xfe", b"\xc3", b"\x80abc", b"\x00", b"\xed\xa0\x80", b"\xef\xbb\xbf"])


@st.composite
def broken_yaml_texts(draw) -> bytes:
    data = BASE_TEXT.encode()
    op = draw(st.sampled_from(["truncate", "insert", "delete", "bytes"]))
    i = draw(st.integers(0, len(data)))
    if op == "truncate":
        return data[:i]
    if op == "insert":
        return data[:i] + draw(YAML_JUNK).encode() + data[i:]
    if op == "delete":
        return data[:i] + data[i + draw(st.integers(1, 80)):]
    return data[:i] + draw(BAD_BYTES) + data[i:]


@settings(FUZZ, max_examples=80)
@given(broken_yaml_texts())
def test_broken_experiment_text_loads_or_fails_cleanly(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzz-experiment.yaml"
    path.write_bytes(data)
    outcome(lambda: load_experiment(path))


# -- dataset files -------------------------------------------------------------------------------
def base_rows(per_topic: int = 6) -> list[dict[str, Any]]:
    rows = []
    for i in range(per_topic):
        for topic, vocab in TOPICS.items():
            words = vocab.split()
            rows.append({"body": " ".join(words[(i + j) % len(words)] for j in range(3 + i)), "topic": topic})
    return rows


def as_csv(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for r in rows:
        writer.writerow([r.get(c, "") for c in columns])
    return out.getvalue().encode()


def as_jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r, default=str) + "\n" for r in rows).encode()


@st.composite
def mutated_datasets(draw) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    rows: list[Any] = base_rows(draw(st.integers(1, 12)))
    columns = ["body", "topic"]
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["empty_label", "empty_text", "one_label", "drop_column", "wrong_type", "drop_rows",
                                   "duplicate", "extra_column"]))
        if not rows:
            break
        i = draw(st.integers(0, len(rows) - 1))
        if op == "empty_label":
            rows[i]["topic"] = draw(st.sampled_from(["", " ", None]))
        elif op == "empty_text":
            rows[i]["body"] = draw(st.sampled_from(["", "  ", None, "\n"]))
        elif op == "one_label":
            rows = [dict(r, topic="sport") for r in rows]
        elif op == "drop_column" and columns:
            gone = draw(st.sampled_from(columns))
            columns = [c for c in columns if c != gone]
            rows = [{k: v for k, v in r.items() if k != gone} for r in rows]
        elif op == "wrong_type":
            rows[i][draw(st.sampled_from(["body", "topic"]))] = draw(scalars | st.lists(scalars, max_size=2))
        elif op == "drop_rows":
            rows = rows[: draw(st.integers(0, len(rows)))]
        elif op == "duplicate":
            rows = rows + [dict(r) for r in rows]
        elif op == "extra_column":
            columns = [*columns, "extra"]
            rows = [dict(r, extra="x") for r in rows]
    if fmt == "jsonl" and draw(st.booleans()):
        rows.insert(draw(st.integers(0, len(rows))), draw(scalars | st.lists(scalars, max_size=2)))  # not an object
    data = as_csv([r for r in rows if isinstance(r, dict)], columns) if fmt == "csv" else as_jsonl(rows)
    op = draw(st.sampled_from(["none", "none", "truncate", "garbage", "bad_bytes"]))
    i = draw(st.integers(0, len(data)))
    if op == "truncate":
        data = data[:i]
    elif op == "garbage":
        data = data[:i] + draw(st.binary(max_size=12)) + data[i:]
    elif op == "bad_bytes":
        data = data[:i] + draw(BAD_BYTES) + data[i:]
    return fmt, data


def data_experiment(path: Path, **dataset: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw["pipeline"]["dataset"] = {"path": str(path), "text_column": "body", "label_column": "topic", **dataset}
    raw["quick"] = {"trials": 2, "pipeline": {"max_examples": 20}}
    return raw


def load_and_check(path: Path, **dataset: Any) -> Experiment:
    exp = parse_experiment(data_experiment(path, **dataset), "fuzz.yaml")
    check_inputs(exp)
    check_inputs(exp.quick_variant())
    return exp


@FUZZ
@given(mutated_datasets())
def test_mutated_dataset_loads_or_fails_cleanly(tmp_path_factory, dataset):
    fmt, data = dataset
    path = tmp_path_factory.getbasetemp() / f"fuzz-data.{fmt}"
    path.write_bytes(data)
    outcome(lambda: load_and_check(path))


# -- named cases: each bad file names its key ----------------------------------------------------
@pytest.mark.parametrize("name, content, key, words", [
    ("d.csv", None, "pipeline.dataset.path", "no such file"),
    ("d.txt", b"body,topic\nx,y\n", "pipeline.dataset.path", ".csv or .jsonl"),
    ("d.csv", b"", "pipeline.dataset.path", "no rows"),
    ("d.csv", b"body,topic\n", "pipeline.dataset.path", "no rows"),
    ("d.csv", b"body,topic\nmatch goal,sport\n\xff\xfe,tech\n", "pipeline.dataset.path", "UTF-8"),
    ("d.csv", b"text,topic\nmatch goal,sport\n", "pipeline.dataset.text_column", "'body'"),
    ("d.csv", b"body,topic\nmatch goal,sport\nchip code\n", "pipeline.dataset.label_column", "line 3"),
    ("d.csv", b"body,topic\nmatch goal,sport\n ,tech\n", "pipeline.dataset.text_column", "empty"),
    ("d.csv", b"body,topic\nmatch goal,sport\nchip code,\n", "pipeline.dataset.label_column", "empty"),
    ("d.csv", b"body,topic\n" + b"match goal,sport\n" * 10, "pipeline.dataset.label_column", "2 labels"),
    ("d.jsonl", b'{"body": "match goal", "topic": "sport"}\n{"body": "chip"\n', "pipeline.dataset.path", "line 2"),
    ("d.jsonl", b'{"body": "match goal", "topic": "sport"}\n[1, 2]\n', "pipeline.dataset.path", "line 2"),
    ("d.jsonl", b'{"body": "match goal", "topic": "sport"}\n{"body": 7, "topic": "tech"}\n',
     "pipeline.dataset.text_column", "line 2"),
    ("d.jsonl", b'{"body": "match goal", "topic": "sport"}\n{"body": "chip", "topic": null}\n',
     "pipeline.dataset.label_column", "line 2"),
])
def test_bad_dataset_names_its_key(tmp_path, name, content, key, words):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_and_check(path)
    assert err.value.key == key, str(err.value)
    assert words in str(err.value), str(err.value)


@pytest.mark.parametrize("path", ["a\nb.csv", "~nosuchuser/d.csv", "x" * 300 + ".csv", "/", "/dev/null", "d.parquet",
                                  "/etc/passwd"])
def test_awkward_dataset_paths(path):
    with pytest.raises(ConfigError) as err:
        load_and_check(Path(path) if not path.startswith("~") else path)
    assert err.value.key == "pipeline.dataset.path" and "\n" not in str(err.value), str(err.value)


def test_too_few_rows_per_label_for_the_split(tmp_path):
    path = tmp_path / "d.csv"
    rows = base_rows(6) + [{"body": "a lonely text about cooking", "topic": "food"}]
    path.write_bytes(as_csv(rows, ["body", "topic"]))
    with pytest.raises(ConfigError) as err:
        load_and_check(path)
    assert err.value.key.startswith("pipeline.") and "'food'" in str(err.value), str(err.value)


def test_good_dataset_passes_and_a_bom_is_fine(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbf" + as_csv(base_rows(8), ["body", "topic"]))
    load_and_check(path)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(as_jsonl([dict(r, topic=i % 3) for i, r in enumerate(base_rows(8))]))  # integer labels are fine
    load_and_check(jsonl)


# -- the command itself: exit 0 or 2, one line, no traceback -------------------------------------
def _validate_all(paths: list[Path]) -> list[tuple[int, str]]:
    """``greenknobs validate`` on each file, two at a time (each pays the imports): (exit code, stderr)."""
    results = []
    for pair in (paths[i:i + 2] for i in range(0, len(paths), 2)):
        procs = [subprocess.Popen([sys.executable, "-m", "greenknobs", "validate", str(p)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=ROOT) for p in pair]
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=300)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            results.append((proc.returncode, err))
    return results


def test_cli_validate_on_broken_inputs(tmp_path):
    bad_bytes = tmp_path / "not-utf8.yaml"
    bad_bytes.write_bytes(BASE_TEXT.encode()[:200] + b"\xff\xfe" + BASE_TEXT.encode()[200:])
    junk = copy.deepcopy(BASE)
    junk["objectives"]["quality"] = [1, {"x": None}]
    junk["pipeline"]["dataset"] = {"path": str(tmp_path / "data.jsonl"), "text_column": "body", "label_column": "topic"}
    (tmp_path / "data.jsonl").write_bytes(b'{"body": "x", "topic": "a"}\n{not json}\n')
    junk_file = tmp_path / "junk.yaml"
    junk_file.write_text(yaml.safe_dump(junk))
    bad_data = copy.deepcopy(BASE)
    bad_data["pipeline"]["dataset"] = junk["pipeline"]["dataset"]
    bad_data_file = tmp_path / "bad-data.yaml"
    bad_data_file.write_text(yaml.safe_dump(bad_data))
    cases = [(bad_bytes, "UTF-8"), (junk_file, "objectives.quality"), (bad_data_file, "pipeline.dataset.path")]
    for (path, key), (code, stderr) in zip(cases, _validate_all([p for p, _ in cases])):
        assert code == 2, (path.name, code, stderr[-2000:])
        assert "Traceback" not in stderr, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("greenknobs: error:") and key in lines[0], (path.name, lines)


def test_cli_unexpected_error_is_one_line_with_the_traceback_in_a_file(monkeypatch, capsys):
    """A bug (not bad input) still prints one line, exit 1, and says where the traceback went."""
    import greenknobs.config
    from greenknobs.cli import main

    def broken(exp):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(greenknobs.config, "check_inputs", broken)
    monkeypatch.delenv("GREENKNOBS_DEBUG", raising=False)
    assert main(["validate", str(DEFAULT)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("greenknobs: internal error: RuntimeError: simulated bug second line")
    saved = Path(err[0].split("traceback in ")[1].split(" (")[0])
    try:
        assert "Traceback" in saved.read_text() and "simulated bug" in saved.read_text()
    finally:
        saved.unlink()
    monkeypatch.setenv("GREENKNOBS_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["validate", str(DEFAULT)])
