"""Publish a study's Pareto front: files under runs/<name>/pareto/ and the parent MLflow run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greenknobs import analysis, plots, search
from greenknobs.config import Experiment


@dataclass
class Front:
    rows: list[dict[str, Any]]  # the feasible Pareto front (from Optuna), by energy
    all_rows: list[dict[str, Any]]
    files: dict[str, Path]


def results_dir(exp: Experiment) -> Path:
    return Path("runs") / exp.name


def collect(exp: Experiment, study) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    front = [search.trial_row(t, exp) for t in search.front_trials(study)]
    return front, search.all_rows(study, exp)


def publish(exp: Experiment, study, tracker) -> Front:
    metric = exp.objectives.quality_metric
    front_rows, all_rows = collect(exp, study)
    outdir = results_dir(exp) / "pareto"
    files = analysis.write_front(front_rows, all_rows, metric, outdir)
    if any(r["state"] == "COMPLETE" for r in all_rows):
        files.update(plots.pareto_plots(all_rows, front_rows, metric, f"{exp.name}: energy vs {metric}", outdir))
    run_ids = {r["trial"]: r["mlflow_run_id"] for r in all_rows if r.get("mlflow_run_id")}
    tracker.log_front(all_rows, {r["trial"] for r in front_rows}, run_ids,
                      {"pareto": p for p in files.values()}, analysis.front_table_dict(front_rows, metric))
    return Front(front_rows, all_rows, files)
