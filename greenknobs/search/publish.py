"""Publish a study's Pareto front: files under runs/<name>/pareto/ and the parent MLflow run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from greenknobs.config import Experiment
from greenknobs.errors import GreenknobsError
from greenknobs.records import TrialRow
from greenknobs.report import analysis, plots, tables
from greenknobs.report.analysis import Payback
from greenknobs.search import study as studies
from greenknobs.search.coordination import StudyLock
from greenknobs.search.rows import all_rows, front_rows
from greenknobs.search.study import Study
from greenknobs.urls import normalise_db_url


@dataclass
class Front:
    rows: list[TrialRow]  # the feasible Pareto front (from Optuna), by energy
    all_rows: list[TrialRow]
    files: dict[str, Path]
    cost: Payback  # what the search (and its isolation study) spent, and when each recommendation repays it


def results_dir(exp: Experiment) -> Path:
    return exp.results_dir


def collect(exp: Experiment, study: Study) -> tuple[list[TrialRow], list[TrialRow]]:
    return front_rows(study, exp), all_rows(study, exp)


def publish(exp: Experiment, study: Study, tracker) -> Front:
    """Under the study lock: workers that finish together publish one after another (their MLflow
    tag updates on the same runs would otherwise collide)."""
    lock = StudyLock(normalise_db_url(exp.storage, "storage"), exp.name)
    try:
        with lock.held():
            return _publish(exp, study, tracker)
    finally:
        lock.close()


def _publish(exp: Experiment, study: Study, tracker) -> Front:
    metric = exp.objectives.quality_metric
    front, rows = collect(exp, study)
    outdir = results_dir(exp) / "pareto"
    files = tables.write_front(front, rows, outdir)
    if any(r.complete for r in rows):
        files.update(plots.pareto_plots(rows, front, f"{exp.name}: energy vs {metric}", outdir))
    run_ids = {r.trial: r.mlflow_run_id for r in rows if r.mlflow_run_id}
    tracker.log_front(rows, {r.trial for r in front}, run_ids, list(files.values()), tables.front_table_dict(front))
    tracker.describe_experiment(tables.front_markdown(front, rows, f"{exp.name}: energy vs {metric}"))
    cost = search_cost(exp, study, front, rows)
    tracker.log_cost(cost)
    return Front(front, rows, files, cost)


def search_cost(exp: Experiment, study: Study, front: list[TrialRow], rows: list[TrialRow]) -> Payback:
    from greenknobs.search.ablation import isolation_experiment  # the isolation study lives beside this one

    iso_rows: list[TrialRow] = []
    iso_overhead = 0.0
    try:
        iso = isolation_experiment(exp)
        iso_study = studies.open_study(iso, create=False)
        iso_rows, iso_overhead = all_rows(iso_study, iso), studies.overhead_j(iso_study)
    except GreenknobsError:
        pass
    baseline = next((r for r in rows if r.baseline and r.complete), None)
    base_trial = studies.baseline_trial(study)
    predictions = ((base_trial.user_attrs.get("result") or {}).get("samples") or {}).get("inference") if base_trial else None
    maximize = exp.objectives.quality_direction == "maximize"
    floor = analysis.noise_floor(analysis.baseline_rows(iso_rows))  # None until the isolation study repeated it
    recs = analysis.recommendations(front, baseline, floor, [s.name for s in exp.searched_knobs], maximize, predictions,
                                   exp.fixed_settings())
    return analysis.payback(rows, iso_rows, recs, baseline, predictions, studies.overhead_j(study), iso_overhead,
                            floor, exp.deployment.stated)
