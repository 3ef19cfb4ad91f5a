"""Tables of trials and of the Pareto front. The only module importing pandas.

The front itself comes from Optuna (``search.study.front_trials``); this module only shapes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from greenknobs.records import TrialRow

ROUND = {"energy_j": 1, "energy_saving_pct": 1, "quality_retained_pct": 1, "time_s": 1}


def trials_frame(rows: list[TrialRow]) -> pd.DataFrame:
    """One row per trial: figures, provenance, then every searched knob as its own column."""
    records = []
    for r in rows:
        rec: dict[str, Any] = {
            "trial": r.trial, "baseline": r.baseline, "state": r.state, "energy_j": r.energy_j,
            r.metric: r.quality, "energy_saving_pct": r.energy_saving_pct,
            "quality_retained_pct": r.quality_retained_pct, "feasible": r.feasible,
            "provenance": r.provenance, "meter": r.meter, "time_s": r.time_s}
        rec.update(r.searched)
        records.append(rec)
    return pd.DataFrame.from_records(records)


def write_front(front_rows: list[TrialRow], all_rows: list[TrialRow], outdir: Path) -> dict[str, Path]:
    """pareto.csv (the front), trials.csv (everything); returns the written paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {"pareto_csv": outdir / "pareto.csv", "trials_csv": outdir / "trials.csv"}
    trials_frame(front_rows).to_csv(paths["pareto_csv"], index=False)
    trials_frame(all_rows).to_csv(paths["trials_csv"], index=False)
    return paths


def front_table_dict(front_rows: list[TrialRow]) -> dict[str, list[Any]]:
    """Column-oriented table for ``mlflow.log_table`` (viewable in the MLflow UI)."""
    df = trials_frame(front_rows)
    return {c: [None if pd.isna(v) else v for v in df[c].tolist()] for c in df.columns}


def render_front(front_rows: list[TrialRow]) -> str:
    """A console table of the front."""
    if not front_rows:
        return "(no feasible trial yet)"
    metric = front_rows[0].metric
    df = trials_frame(front_rows).drop(columns=["state", "feasible"])
    for col, digits in ROUND.items():
        if col in df:
            df[col] = df[col].astype(float).round(digits)
    df[metric] = df[metric].astype(float).round(4)
    return df.to_string(index=False)
