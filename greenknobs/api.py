"""``greenknobs.optimize(fn, "experiment.yaml")``: a search over your own function, from Python.

    import greenknobs as gk

    def objective(trial):
        ...                                   # your training code, handing its objects to the trial

    front = gk.optimize(objective, "experiment.yaml", trials=20)

The experiment file declares the knobs (spaces and defaults), objectives, budget, storage and
MLflow store as for ``greenknobs search``; its ``pipeline:`` block may be left out (the function is
the pipeline; options there reach it as ``trial.options``). Several processes calling this on one
PostgreSQL storage share the study, as ``study.optimize`` workers do in Optuna.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from greenknobs.config import load_experiment_with_function
from greenknobs.search import Search, publish
from greenknobs.tracking import Tracker
from greenknobs.trial import Trial


def optimize(fn: Callable[[Trial], Any], experiment: str | Path, *, trials: int | None = None,
             storage: str | None = None, mlflow_uri: str | None = None, quick: bool = False,
             reporter: Any = None) -> Any:
    """Run (or continue) the experiment's study with ``fn`` as its pipeline; returns the feasible
    Pareto front (``front.rows``: knobs, energy, validation and test quality, provenance)."""
    exp = load_experiment_with_function(experiment, fn)
    if quick:
        exp = exp.quick_variant()
    exp = exp.with_overrides(trials=trials, storage=storage, mlflow_uri=mlflow_uri)
    if reporter is None:  # the console's progress, as `greenknobs search` prints it (False: none)
        from greenknobs.cli import ConsoleReporter

        reporter = ConsoleReporter(exp.objectives.quality_metric)
    reporter = reporter or None
    tracker = Tracker(exp.mlflow_uri, exp.name)
    outcome = Search(exp, tracker, reporter).run()
    front = publish(exp, outcome.study, tracker)
    tracker.end_study()
    return front
