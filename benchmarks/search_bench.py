"""Shared by the search benchmarks: run one search in-process in a scratch folder and sum it up
(what it spent, how long it took, the hypervolume it reached, the best held-out saving at the floor).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenknobs.config import Experiment, load_experiment
from greenknobs.records import TrialRow
from greenknobs.report import analysis
from greenknobs.search import Search, energy_model
from greenknobs.search import study as studies
from greenknobs.search.rows import all_rows
from greenknobs.tracking import Tracker


@dataclass
class Outcome:
    label: str
    rows: list[TrialRow]
    spent_j: float
    wall_s: float
    hv_by_trial: list[float]
    spent_by_trial: list[float]
    provenance: str
    model_errors: list[float]  # the energy model's error on each trial predicted from those before it

    @property
    def trials(self) -> int:
        """Trials that ran or were answered (not ones still queued when the budget ran out)."""
        return sum(r.state in ("COMPLETE", "PRUNED", "FAIL") for r in self.rows)

    @property
    def hv(self) -> float:
        return self.hv_by_trial[-1] if self.hv_by_trial else 0.0

    def hv_at_joules(self, joules: float) -> float:
        """The hypervolume reached by the time the search had spent ``joules``."""
        best = 0.0
        for hv, spent in zip(self.hv_by_trial, self.spent_by_trial):
            if spent <= joules:
                best = hv
        return best

    def best_test_saving(self, min_retained: float) -> tuple[float, TrialRow | None]:
        """The largest energy saving among feasible trials (chosen on validation) whose held-out
        test quality kept ``min_retained`` of the baseline's."""
        best: tuple[float, TrialRow | None] = (0.0, None)
        for r in self.rows:
            kept = r.complete and r.feasible and (r.test_quality_retained_pct or 0.0) >= 100 * min_retained
            if kept and (r.energy_saving_pct or 0.0) > best[0]:
                best = (r.energy_saving_pct or 0.0, r)
        return best


def scratch_experiment(path: str, workdir: Path, name: str, quick: bool, **changes: Any) -> Experiment:
    """The experiment (or its --quick variant) in its own scratch stores; the trial budget is the
    only budget (no energy budget, no timeout) unless ``changes`` say otherwise."""
    exp = load_experiment(path)
    if quick:
        exp = exp.quick_variant()
    changes = {"energy_budget_j": None, "timeout_s": None, **changes}
    return replace(exp, name=name, storage=f"sqlite:///{workdir}/{name}.db",
                   mlflow_uri=f"sqlite:///{workdir}/{name}-mlflow.db", **changes)


def run_search(exp: Experiment, workdir: Path, label: str, isolation_plan=None) -> Outcome:
    """Run ``exp`` to its budget (or, with ``isolation_plan(exp, tracker)``, that plan instead)."""
    cwd = os.getcwd()
    os.chdir(workdir)  # the phase-output store and result files land in the scratch folder
    try:
        tracker = Tracker(exp.mlflow_uri, exp.name)
        started = time.perf_counter()
        if isolation_plan is not None:
            study = isolation_plan(exp, tracker)
        else:
            study = Search(exp, tracker).run().study
        wall = time.perf_counter() - started
        tracker.end_study()
    finally:
        os.chdir(cwd)
    return summarise(exp, study, label, wall)


def summarise(exp: Experiment, study, label: str, wall: float) -> Outcome:
    rows = all_rows(study, exp)
    maximize = exp.objectives.quality_direction == "maximize"
    base = next(r for r in rows if r.baseline and r.complete)
    retained = exp.constraints.min_quality_retained or 0.97
    floor = (base.validation_quality or 0.0) * (retained if maximize else 1 / retained)
    prog = analysis.progress(rows, maximize, floor)
    provs = {r.provenance for r in rows if r.provenance}
    errors = energy_model.prequential_errors(exp, studies.energy_observations(study))
    return Outcome(label, rows, studies.spent_j(study), wall, prog.hypervolume if prog else [],
                   prog.cumulative_spent_j if prog else [], "measured" if provs == {"measured"} else "modelled", errors)
