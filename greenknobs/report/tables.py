"""Tables of trials and of the Pareto front. The only module importing pandas.

The front itself comes from Optuna (``search.study.front_trials``); this module only shapes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from greenknobs.records import TrialRow


def quality_columns(metric: str) -> tuple[str, str]:
    """Column names that say which quality steered the search and which was held out."""
    return f"{metric} validation (searched)", f"{metric} test (held out)"


def energy_column(rows: list[TrialRow]) -> str:
    label = next((r.energy_label for r in rows if r.scope), "J, all phases")
    return f"energy ({label})"


SIZE_COLUMNS = ("parameters", "trainable_parameters", "flops_per_prediction")  # empty where the pipeline reports none


def trials_frame(rows: list[TrialRow]) -> pd.DataFrame:
    """One row per trial: figures with their provenance and meter parameters, the model's size as the
    pipeline reported it, then every searched knob."""
    records = []
    energy = energy_column(rows)
    for r in rows:
        val, test = quality_columns(r.metric)
        rec: dict[str, Any] = {
            "trial": r.trial, "baseline": r.baseline, "state": r.state, energy: r.energy_j,
            "energy_saving_pct": r.energy_saving_pct, val: r.validation_quality, test: r.test_quality,
            "quality_retained_pct (validation)": r.quality_retained_pct,
            "quality_retained_pct (test)": r.test_quality_retained_pct, "feasible": r.feasible,
            "provenance": r.provenance, "meter": r.meter, "energy_scope": r.scope,
            "meter_params": json.dumps(r.meter_params, sort_keys=True, default=str) if r.meter_params else None,
            "time_s": r.time_s}
        rec.update({k: r.model_size.get(k) for k in SIZE_COLUMNS})
        rec.update(r.searched)
        records.append(rec)
    frame = pd.DataFrame.from_records(records)
    for col in SIZE_COLUMNS:  # whole numbers stay whole, a missing figure stays empty (not NaN, not 0)
        if col in frame:
            frame[col] = frame[col].astype("Int64")
    return frame


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
    """A console table of the front: energy, saving, validation (searched) and test (held out) quality."""
    if not front_rows:
        return "(no feasible trial yet)"
    val, test = quality_columns(front_rows[0].metric)
    df = trials_frame(front_rows).drop(columns=["state", "feasible", "meter_params", "energy_scope", "baseline"])
    df = df.drop(columns=[c for c in SIZE_COLUMNS if c in df and df[c].isna().all()])  # a size no pipeline reported
    for col in df.columns:
        if col in (val, test):
            df[col] = df[col].astype(float).round(4)
        elif col.startswith(("energy", "quality_retained", "time_s")) and col != "energy_scope":
            df[col] = df[col].astype(float).round(1)
    return df.to_string(index=False)


def front_markdown(front_rows: list[TrialRow], all_rows: list[TrialRow], title: str) -> str:
    """The front as a Markdown table (the MLflow experiment description shows it above the runs)."""
    done = [r for r in all_rows if r.state == "COMPLETE"]
    base = next((r for r in done if r.baseline), None)
    lines = [f"### {title}", ""]
    if not front_rows:
        return "\n".join(lines + ["No feasible trial yet."])
    metric = front_rows[0].metric
    prov = "/".join(sorted({r.provenance for r in front_rows if r.provenance}))
    lines.append(f"Feasible Pareto front from Optuna: {len(front_rows)} of {len(all_rows)} trials. Energy {prov} by "
                 f"{'/'.join(sorted({r.meter for r in front_rows if r.meter}))}; {metric} chosen on validation, "
                 f"test held out.")
    sized = any(r.model_size.get("parameters") for r in front_rows)
    lines += ["", f"| trial | {energy_column(front_rows)} | saved | {metric} validation | {metric} test | "
                  f"{'parameters | ' if sized else ''}knobs changed |",
              f"|---:|---:|---:|---:|---:|{'---:|' if sized else ''}---|"]
    for r in front_rows:
        changed = ", ".join(f"{k}={v}" for k, v in r.knobs.items() if base is not None and base.knobs.get(k) != v)
        size = (f"{r.model_size['parameters']:,} | " if r.model_size.get("parameters") else "– | ") if sized else ""
        lines.append(f"| {r.trial} | {r.energy_j:.1f} | {r.energy_saving_pct:.1f} % | {r.validation_quality:.4f} | "
                     f"{(r.test_quality or 0):.4f} | {size}{changed or 'baseline'} |")
    return "\n".join(lines)
