"""Trials read back from the study as ``TrialRow``s (what tables, plots, MLflow and the CLI show)."""

from __future__ import annotations

from typing import Any

from greenknobs.config import Experiment
from greenknobs.records import TrialRow
from greenknobs.search.study import FrozenTrial, Study, front_trials, run_aliases

# Where pipelines report the model's size (``ctx.detail`` in a phase), most specific first: the model
# as served, as trained, as loaded and prepared. Each entry: (phase, detail path, size key).
SIZE_DETAILS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("inference", ("served", "parameters"), "parameters"),  # vision: the model served (pruned, maybe int8)
    ("training", ("parameters", "trained"), "parameters"),  # vision: after pruning and fine-tuning
    ("model", ("parameters",), "parameters"),  # text and LM pipelines: after pruning, casting, LoRA
    ("training", ("trainable_parameters",), "trainable_parameters"),  # the shared training loop
    ("inference", ("served", "flops_per_image"), "flops_per_prediction"),  # vision: counted on a forward pass
)


def model_size(phases: dict[str, Any]) -> dict[str, Any]:
    """What a trial's pipeline reported about its model's size, read from the phase details: the
    parameter count (of the model served, else trained, else prepared), the trainable parameters,
    FLOPs per prediction, and the detail each figure came from. Nothing reported: nothing here (a
    column left empty, never a 0)."""
    out: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for phase, path, key in SIZE_DETAILS:
        if key in out:
            continue
        value: Any = (phases.get(phase) or {}).get("details") or {}
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            out[key] = value
            sources[key] = f"{phase}.{'.'.join(path)}"
    if out:
        out["sources"] = sources
    return out


def trial_row(t: FrozenTrial, exp: Experiment, study_name: str = "", run_ids: dict[str, str] | None = None) -> TrialRow:
    """``run_ids``: the MLflow run ids that replaced placeholders (runs created while the tracking
    server was unreachable; see tracking.py)."""
    s: dict[str, Any] = t.user_attrs.get("summary", {})
    result = t.user_attrs.get("result", {})
    phases = result.get("phases", {})
    meter_params: dict[str, Any] = s.get("meter_params") or next(
        (p.get("meter_params") for p in phases.values() if p.get("meter_params")), {})
    return TrialRow(
        trial=t.number,
        baseline=bool(t.user_attrs.get("baseline")),
        state=t.state.name,
        metric=exp.objectives.quality_metric,
        knobs=dict(t.user_attrs.get("knob_values", {})),
        searched=dict(t.params),
        energy_j=s.get("energy_j"),
        scope=s.get("scope"),
        validation_quality=s.get("quality"),
        test_quality=s.get("test_quality"),
        energy_saving_pct=s.get("energy_saving_pct"),
        quality_retained_pct=s.get("quality_retained_pct"),
        test_quality_retained_pct=s.get("test_quality_retained_pct"),
        trivial_quality=s.get("trivial_quality"),
        feasible=s.get("feasible"),
        provenance=s.get("provenance"),
        meter=s.get("meter"),
        meter_params=meter_params,
        phase_energy_j={name: p.get("energy_j") for name, p in phases.items()},
        phase_provenance={name: p.get("provenance") for name, p in phases.items()},
        phases_below_resolution=[name for name, p in phases.items()
                                 if ((p.get("details") or {}).get("measurement") or {}).get("below_resolution")],
        contended_phases=[name for name, p in phases.items()
                          if ((p.get("details") or {}).get("measurement") or {}).get("contended")],
        model_size=model_size(phases),
        carbon_g=s.get("carbon_g", {}).get("total"),
        carbon_g_per_phase=s.get("carbon_g", {}),
        carbon_source=(result.get("carbon") or {}).get("source"),
        net_energy_j=(s.get("net_energy_j") or {}).get("total"),
        time_s=s.get("time_s"),
        fail_reason=t.user_attrs.get("fail_reason"),
        mlflow_run_id=(run_ids or {}).get(t.user_attrs.get("mlflow_run_id", ""), t.user_attrs.get("mlflow_run_id")),
        spent_j=float((t.user_attrs.get("spent") or {}).get("energy_j", 0.0)),
        duplicate_of=t.user_attrs.get("duplicate_of"),
        reused_from=(result.get("reuse") or {}).get("from_trial") if (result.get("reuse") or {}).get("status") == "reused"
        else None,
        stop_reason=t.user_attrs.get("stop_reason"),
        variant_of=t.user_attrs.get("variant_of"),
        study=study_name,
        ablation=t.user_attrs.get("ablation"),
        serving=result.get("serving"),
    )


def all_rows(study: Study, exp: Experiment) -> list[TrialRow]:
    run_ids = run_aliases(study)
    return [trial_row(t, exp, study.study_name, run_ids) for t in study.get_trials(deepcopy=False)]


def front_rows(study: Study, exp: Experiment) -> list[TrialRow]:
    run_ids = run_aliases(study)
    return [trial_row(t, exp, study.study_name, run_ids) for t in front_trials(study)]
