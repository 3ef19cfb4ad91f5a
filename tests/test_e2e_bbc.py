"""End to end on the real all-MiniLM-L6-v2 and the real BBC News corpus, through the CLI (--quick)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXP = str(ROOT / "experiments" / "bbc-news-minilm.yaml")

pytestmark = pytest.mark.e2e


def gk(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greenknobs.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900)


def test_quick_search_on_minilm_bbc_news(tmp_path):
    store = ["--storage", f"sqlite:///{tmp_path}/optuna.db", "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    proc = gk("search", EXP, "--quick", "--trials", "3", *store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "trial 0: baseline" in out and "Pareto front" in out
    for phase in ("data", "model", "system", "training", "inference"):
        assert f"    {phase}" in out  # per-phase progress lines
    assert "1 study run, 3 trial runs" in out
    assert (tmp_path / "runs" / "bbc-news-minilm-quick" / "pareto" / "pareto.png").stat().st_size > 10_000

    rows = json.loads(gk("pareto", EXP, "--quick", "--json", "--storage", store[1], cwd=tmp_path).stdout)
    assert rows, "the front is never empty once the baseline completed"
    for r in rows:
        assert r["provenance"] == "modelled" and r["meter"] == "cpu-model"
        assert r["meter_params"]["watts_per_busy_core"] > 0
        assert set(r["phase_energy_j"]) == {"data", "model", "system", "training", "inference"}
        assert r["feasible"] is True
        assert 0 < r["validation_quality"] <= 1 and 0 < r["test_quality"] <= 1  # searched and held out, both shown
        assert r["quality_roles"] == {"validation_quality": "validation (searched)", "test_quality": "test (held out)"}
        assert r["trivial_quality"] >= 0.15  # the better of majority class and a stratified random guesser

    # The real model learned the real data: the baseline beats the majority-class predictor clearly.
    from greenknobs.config import load_experiment
    from greenknobs.search import open_study

    exp = load_experiment(EXP).quick_variant().with_overrides(storage=store[1])
    base = open_study(exp, create=False).trials[0]
    q = base.user_attrs["result"]["quality"]
    assert base.user_attrs["baseline"] and q["test"]["macro_f1"] > q["test"]["trivial_macro_f1"] + 0.2
    assert q["validation"]["stratified_macro_f1"] > q["validation"]["majority_macro_f1"]  # 5 topics: ~0.2 vs ~0.07
    details = base.user_attrs["result"]["phases"]["data"]["details"]
    assert details["duplicates_dropped_before_split"] > 0  # BBC News repeats some articles
    n = details["examples"]  # 600 articles, split 60/20/20
    assert 110 <= n["validation"] <= 130 and 110 <= n["test"] <= 130
    # one fixed workload in the objective (validation); test in the held-out window, outside it
    assert base.user_attrs["result"]["samples"]["inference"] == n["validation"]
    assert base.user_attrs["result"]["samples"]["test"] == n["test"] and base.user_attrs["result"]["held_out"]["energy_j"] > 0

    # A second run continues the same study.
    proc = gk("search", EXP, "--quick", "--trials", "4", *store, cwd=tmp_path)  # the study's total: one more
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "continuing study 'bbc-news-minilm-quick' (3 trials so far)" in proc.stdout
    assert "1 study run, 4 trial runs" in proc.stdout
