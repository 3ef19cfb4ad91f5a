"""Near-duplicates across the split: found over the whole corpus (MinHash candidates, exact Jaccard
confirmation, any threshold in range), counted by the pair of splits they straddle, dropped before
the split when the experiment says ``pipeline.dedup: near``, and reported by ``validate`` and the
report; duplicate texts with different labels are reported, not kept silently."""

from __future__ import annotations

import csv
import itertools
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from greenknobs.errors import ConfigError
from greenknobs.ml import dedup
from greenknobs.ml.data import (
    dedup_before_split,
    describe_near_duplicates,
    label_conflicts,
    near_duplicate_report,
    split_assignment,
)
from pipelines.text_data import DEDUP_OPTIONS, check_dataset, check_dedup_options, split_corpus

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(400)]


def text(rng: random.Random, n: int = 60) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def edit(t: str, positions: list[int]) -> str:
    """``t`` with the words at ``positions`` replaced by words no text uses: each edit changes at
    most three 3-grams (one word: Jaccard ~0.90 on 60 words; five spread out: ~0.59)."""
    words = t.split()
    for p in positions:
        words[p] = f"new{p}"
    return " ".join(words)


def brute_force(texts: list[str], threshold: float) -> set[tuple[int, int]]:
    sets = [dedup.shingles(t) for t in texts]
    return {(i, j) for i, j in itertools.combinations(range(len(texts)), 2) if dedup.jaccard(sets[i], sets[j]) >= threshold}


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rng = random.Random(7)
    texts = [text(rng) for _ in range(120)]
    texts += [edit(texts[i], [30]) for i in range(0, 20)]  # 20 close copies (~0.90)
    texts += [edit(texts[i], [5, 15, 25, 35, 45]) for i in range(20, 30)]  # 10 looser ones (~0.59)
    texts += [texts[40].upper().replace(" ", "  ")]  # an exact duplicate after normalising case and spaces
    return texts


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.95])
def test_near_pairs_are_exactly_the_pairs_at_the_threshold(corpus, threshold):
    found = {(p.first, p.second) for p in dedup.near_pairs(corpus, threshold)}
    assert found == brute_force(corpus, threshold)
    assert all(p.jaccard >= threshold for p in dedup.near_pairs(corpus, threshold))


def test_the_threshold_changes_what_counts(corpus):
    at_08, at_05 = dedup.near_pairs(corpus, 0.8), dedup.near_pairs(corpus, 0.5)
    assert len(at_08) == 21  # the 20 close copies and the exact duplicate
    assert len(at_05) == 31  # and the 10 looser ones
    assert dedup.duplicates(corpus, "near") == dedup.duplicates(corpus, "near", dedup.NEAR_THRESHOLD)
    with pytest.raises(ValueError, match="threshold"):
        dedup.near_pairs(corpus, 0.1)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.8, 0.9, 1.0])
def test_banding_finds_a_pair_at_the_threshold_almost_surely(threshold):
    rows = dedup.rows_per_band(threshold)
    assert dedup.candidate_probability(threshold, rows) >= 0.999
    if rows < 16:  # and it is the least permissive banding that does (fewest false candidates)
        assert dedup.candidate_probability(threshold, rows * 2) < 0.999


def test_report_counts_pairs_by_split_pair_and_flags_label_conflicts():
    rng = random.Random(3)
    base = [text(rng) for _ in range(8)]
    examples = [{"text": t, "label": "a"} for t in base]
    examples += [{"text": edit(base[0], [10]), "label": "a"},  # 8: near 0
                 {"text": edit(base[1], [10]), "label": "a"},  # 9: near 1
                 {"text": edit(base[2], [10]), "label": "b"},  # 10: near 2, another label
                 {"text": edit(base[3], [10]), "label": "a"}]  # 11: near 3
    assignment = ["train", "train", "validation", "test", "train", "train", "validation", "test",
                  "train", "test", "test", "test"]
    report = near_duplicate_report(examples, assignment, 0.8)
    assert report["by_split_pair"] == {"train-train": 1, "train-validation": 0, "train-test": 1,
                                       "validation-validation": 0, "validation-test": 1, "test-test": 1}
    assert report["pairs"] == 4 and report["across_splits"] == 2 and report["examples_involved"] == 8
    assert report["label_conflicts"] == 1 and report["label_conflicts_by_split_pair"] == {"validation-test": 1}
    assert {s["splits"] for s in report["first_across_splits"]} == {"train-test", "validation-test"}
    assert report["split_sizes"] == {"train": 5, "validation": 2, "test": 5}
    line = describe_near_duplicates(report)
    assert "4 pairs" in line and "2 across splits" in line and "train-test 1" in line and "1 with different labels" in line
    with pytest.raises(ValueError, match="split names"):
        near_duplicate_report(examples, assignment[:-1])


def test_exact_duplicates_with_different_labels_are_reported_with_the_label_kept():
    examples = [{"text": "Same  story", "label": "sport"}, {"text": "other", "label": "tech"},
                {"text": "same story", "label": "politics"}, {"text": "other", "label": "tech"}]
    conflicts = label_conflicts(examples)
    assert conflicts["texts"] == 1 and conflicts["rows"] == 2  # "other" twice with one label is no conflict
    assert conflicts["first"][0]["labels"] == ["sport", "politics"] and conflicts["first"][0]["kept_label"] == "sport"
    kept, facts = dedup_before_split(examples, "exact")
    assert [e["label"] for e in kept] == ["sport", "tech"] and facts["exact_dropped"] == 2
    assert facts["label_conflicts"]["texts"] == 1


def test_dropping_near_duplicates_before_the_split_leaves_none(corpus):
    examples = [{"text": t, "label": "b" if i >= 120 and i % 2 == 0 else "a"} for i, t in enumerate(corpus)]
    kept, facts = dedup_before_split(examples, "near", 0.8)
    assert facts["exact_dropped"] == 1 and facts["near_dropped"] == 20 and facts["rows_kept"] == len(corpus) - 21
    assert facts["near_label_conflicts"] == 10  # the close copies at even positions carry another label
    assert dedup.near_pairs([e["text"] for e in kept], 0.8) == []
    assert kept[0] is examples[0] and examples[120] not in kept  # the first copy stays
    exact, facts = dedup_before_split(examples, "exact")
    assert facts["near_dropped"] == 0 and len(exact) == len(corpus) - 1
    with pytest.raises(ValueError, match="unknown"):
        dedup_before_split(examples, "fuzzy")


def test_split_corpus_reports_the_split_it_made_and_none_after_dropping(corpus):
    examples = [{"text": t, "label": "abc"[i % 3]} for i, t in enumerate(corpus)]
    options = {"split": {"train": 0.6, "validation": 0.2, "test": 0.2}, "max_examples": None, **DEDUP_OPTIONS}
    train, validation, test, facts = split_corpus([dict(e) for e in examples], options, seed=42)
    merged, names = split_assignment({"train": train, "validation": validation, "test": test})
    expected = near_duplicate_report(merged, names, 0.8)
    assert facts["near_duplicates"] == expected and expected["pairs"] == 20  # the exact copy went before the split
    assert sum(expected["by_split_pair"].values()) == 20 and expected["across_splits"] > 0
    again = split_corpus([dict(e) for e in examples], options, seed=42)
    assert [e["text"] for e in again[2]] == [e["text"] for e in test]  # seeded: the same split every time
    *_, near = split_corpus([dict(e) for e in examples], {**options, "dedup": "near"}, seed=42)
    assert near["near_duplicates"]["pairs"] == 0 and near["dedup"]["near_dropped"] == 20


def test_dedup_options_are_checked_naming_the_key():
    check_dedup_options({"dedup": "near", "near_duplicate_threshold": 0.6})
    with pytest.raises(ConfigError, match="pipeline.dedup"):
        check_dedup_options({"dedup": "fuzzy"})
    for bad in (0.1, 1.5, "high", True):
        with pytest.raises(ConfigError, match="pipeline.near_duplicate_threshold"):
            check_dedup_options({"dedup": "near", "near_duplicate_threshold": bad})


def write_csv(path: Path, corpus: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["body", "topic"])
        for i, t in enumerate(corpus):
            w.writerow([t, "xyz"[i % 3]])
        w.writerow([corpus[3], "z"])  # an exact copy of a text labelled x
    return path


def test_check_dataset_and_validate_report_near_duplicates_by_split_pair(tmp_path, corpus, tiny_model_dir):
    data = write_csv(tmp_path / "texts.csv", corpus)
    options = {"dataset": {"path": str(data), "text_column": "body", "label_column": "topic"},
               "split": {"train": 0.6, "validation": 0.2, "test": 0.2}, "max_examples": None}
    summary = check_dataset(options, seed=1)
    near = summary["near_duplicates"]
    assert near["pairs"] == 20 and near["rows"] == summary["rows"] == len(corpus) - 1
    conflicts = summary["label_conflicts"]  # text 3 (x) copied as z, and the corpus's own copy of text 40 (y) as x
    assert conflicts["texts"] == 2 and conflicts["first"][0]["labels"] == ["x", "z"] and conflicts["first"][0]["kept_label"] == "x"
    assert check_dataset({**options, "dedup": "near"}, seed=1)["near_duplicates"]["pairs"] == 0

    from greenknobs.testing.fixtures import tiny_experiment

    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(tiny_experiment(tmp_path, tiny_model_dir, data)))
    proc = subprocess.run([sys.executable, "-m", "greenknobs.cli", "validate", str(exp)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "near-duplicates:" in x)
    assert "20 pairs at word 3-gram Jaccard >= 0.8" in line and "train-test" in line and "pipeline.dedup: near" in line
    assert "label conflicts: 2 texts appear with different labels" in proc.stdout and "kept 'x'" in proc.stdout


def test_the_report_shows_near_duplicates_by_split_pair():
    from greenknobs.report import html, markdown
    from greenknobs.report.build import ReportInputs, build

    rng = random.Random(3)
    base = [text(rng) for _ in range(4)]
    examples = [{"text": t, "label": "a"} for t in base] + [{"text": edit(base[0], [9]), "label": "b"}]
    near = near_duplicate_report(examples, ["train", "validation", "test", "train", "test"])
    inputs = ReportInputs(
        name="x", pipeline="text-classification", metric="macro_f1", maximize=True, energy_scope="total",
        constraints={}, searched=[], baseline_values={}, rows=[], front=[], isolation_rows=[], importance={},
        meter={"name": "cpu-model", "why": "test"}, carbon={"g_per_kwh": 100.0, "source": "test"},
        reproducibility={}, data={"source": "recorded by the baseline trial's data phase", "near_duplicates": near,
                                  "dedup": {"mode": "exact", "exact_dropped": 3, "near_dropped": 0,
                                            "label_conflicts": {"texts": 2}}})
    report = build(inputs)
    page = html.render(report)
    assert "<td class='l'>train-test</td><td>1</td><td>1</td>" in page  # the pair, with different labels
    assert "3 exact duplicates dropped before the split" in page and "2 texts appeared with different labels" in page
    assert "1 near-duplicate pairs" in markdown.render(report) and "train-test 1" in markdown.render(report)
