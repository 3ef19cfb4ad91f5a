"""Publish a study's Pareto front: files under runs/<name>/pareto/ and the parent MLflow run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from greenknobs.config import Experiment
from greenknobs.records import TrialRow
from greenknobs.report import plots, tables
from greenknobs.search.rows import all_rows, front_rows
from greenknobs.search.study import Study


@dataclass
class Front:
    rows: list[TrialRow]  # the feasible Pareto front (from Optuna), by energy
    all_rows: list[TrialRow]
    files: dict[str, Path]


def results_dir(exp: Experiment) -> Path:
    return Path("runs") / exp.name


def collect(exp: Experiment, study: Study) -> tuple[list[TrialRow], list[TrialRow]]:
    return front_rows(study, exp), all_rows(study, exp)


def publish(exp: Experiment, study: Study, tracker) -> Front:
    metric = exp.objectives.quality_metric
    front, rows = collect(exp, study)
    outdir = results_dir(exp) / "pareto"
    files = tables.write_front(front, rows, outdir)
    if any(r.complete for r in rows):
        files.update(plots.pareto_plots(rows, front, f"{exp.name}: energy vs {metric}", outdir))
    run_ids = {r.trial: r.mlflow_run_id for r in rows if r.mlflow_run_id}
    tracker.log_front(rows, {r.trial for r in front}, run_ids, list(files.values()), tables.front_table_dict(front))
    return Front(front, rows, files)
