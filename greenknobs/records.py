"""What a finished trial is remembered as: the summary the search computes and the row that
search, tracking and the report pass around. Plain dataclasses of JSON-able values, so the study
in its storage stays the record (they round-trip through Optuna user attributes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrialSummary:
    """The search's verdict on one completed trial, against the baseline."""

    energy_j: float  # the energy objective, over ``scope``
    scope: str  # total | a phase | inference_per_1k
    metric: str
    quality: float  # the quality objective: on the validation split (what the search steers by)
    provenance: str
    meter: str
    meter_params: dict[str, Any]
    time_s: float
    energy_saving_pct: float
    quality_retained_pct: float
    feasible: bool
    constraints: dict[str, float] = field(default_factory=dict)  # Optuna constraint values, <= 0 feasible
    trivial_quality: float | None = None  # the trivial predictor's validation score (the guard's bar)
    test_quality: float | None = None  # on the held-out test split: reported, never searched on
    test_quality_retained_pct: float | None = None
    carbon_g: dict[str, float] = field(default_factory=dict)  # per phase and total; empty without an intensity
    net_energy_j: dict[str, float] | None = None  # gross minus idle; None without an idle baseline
    attribution: str = ""  # whether the host ran this worker alone, or the figure is apportioned

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialSummary:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrialRow:
    """One trial as tables, plots, MLflow and ``pareto --json`` show it."""

    trial: int
    baseline: bool
    state: str  # COMPLETE | FAIL | RUNNING | WAITING | PRUNED
    metric: str
    knobs: dict[str, Any] = field(default_factory=dict)  # every knob's value
    searched: dict[str, Any] = field(default_factory=dict)  # the searched ones (Optuna params)
    energy_j: float | None = None
    scope: str | None = None  # what energy_j covers: total, a phase, or inference_per_1k (J per 1,000 predictions)
    validation_quality: float | None = None  # searched: the objective and the constraints read this
    test_quality: float | None = None  # held out: reported beside it, never read by the search
    energy_saving_pct: float | None = None
    quality_retained_pct: float | None = None  # on validation
    test_quality_retained_pct: float | None = None
    trivial_quality: float | None = None
    feasible: bool | None = None
    provenance: str | None = None
    meter: str | None = None
    meter_params: dict[str, Any] = field(default_factory=dict)
    phase_energy_j: dict[str, float] = field(default_factory=dict)
    phase_provenance: dict[str, str] = field(default_factory=dict)
    phases_below_resolution: list[str] = field(default_factory=list)  # windows too short for the meter
    carbon_g: float | None = None
    carbon_g_per_phase: dict[str, float] = field(default_factory=dict)
    carbon_source: str | None = None
    net_energy_j: float | None = None
    time_s: float | None = None
    fail_reason: str | None = None
    mlflow_run_id: str | None = None
    spent_j: float = 0.0  # what running it cost the search (0 for a reused duplicate; failed trials included)
    duplicate_of: int | None = None
    reused_from: int | None = None  # data, model and training loaded from this trial's stored state
    stop_reason: str | None = None  # PRUNED: why the search stopped it (hopeless after part of training)
    variant_of: int | None = None  # queued to try other inference settings on this trial's trained model
    study: str = ""  # the Optuna study it belongs to (the search, or its isolation study)
    ablation: dict[str, Any] | None = None  # isolation-study role: {"knob", "value", "repeat"} or {"combo", ...}
    # what the pipeline reported about the model's size (search.rows.model_size): parameters,
    # trainable_parameters, flops_per_prediction, and under "sources" the detail each was read from;
    # a key is absent when the pipeline reported nothing for it
    model_size: dict[str, Any] = field(default_factory=dict)
    contended_phases: list[str] = field(default_factory=list)  # phases measured while others' load contended
    # serving energy at steady state (greenknobs.meters.steady): j_per_1k with min/max, provenance, latency
    serving: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE" and self.validation_quality is not None

    @property
    def energy_label(self) -> str:
        return energy_label(self.scope)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with the role of each quality spelled out."""
        return {**asdict(self), "quality_roles": {"validation_quality": "validation (searched)",
                                                  "test_quality": "test (held out)"}}


def energy_label(scope: str | None) -> str:
    """What an energy figure of this objective scope is, in words with its unit."""
    if scope == "inference_per_1k":
        return "J per 1,000 predictions (inference)"
    if scope in (None, "total"):
        return "J, all phases"
    return f"J, {scope} phase"
