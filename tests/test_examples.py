"""The examples a user copies: each is a plain script plus at most 15 changed lines (the diff the
docs show), and each runs end to end under `greenknobs search --quick` with every knob verified."""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {"plain-pytorch-regression": "diabetes-mlp", "hf-trainer-csv": "news-trainer"}


def changed_code_lines(plain: Path, adapted: Path) -> list[str]:
    """Lines the greenknobs version adds or changes, outside the module docstring."""
    def code(path: Path) -> list[str]:
        text = path.read_text()
        end = text.index('"""', 3) + 3  # the module docstring says which file is which: not code
        return text[end:].splitlines()

    diff = difflib.unified_diff(code(plain), code(adapted), lineterm="", n=0)
    return [line for line in diff if line.startswith("+") and not line.startswith("+++")]


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_an_example_changes_at_most_15_lines_of_the_plain_script(example):
    folder = ROOT / "examples" / example
    changed = changed_code_lines(folder / "train_plain.py", folder / "train.py")
    assert 0 < len(changed) <= 15, "\n".join(changed)
    assert any("greenknobs" in line for line in changed)


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_an_example_runs_a_quick_search_with_every_knob_verified(example, tmp_path):
    if example == "hf-trainer-csv":
        pytest.importorskip("datasets")
    experiment = ROOT / "examples" / example / "experiment.yaml"
    search = subprocess.run([sys.executable, "-m", "greenknobs", "search", str(experiment), "--quick"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=1500)
    assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]
    assert "FAILED" not in search.stdout, search.stdout[-4000:]
    pareto = subprocess.run([sys.executable, "-m", "greenknobs", "pareto", str(experiment), "--quick", "--json"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert pareto.returncode == 0, pareto.stderr[-2000:]
    front = json.loads(pareto.stdout)
    assert front and all(row["provenance"] in ("measured", "modelled") for row in front), front
    db = tmp_path / "runs" / EXAMPLES[example] / "optuna.db"
    assert db.is_file()
