"""A trial's figures relative to the baseline, and the Optuna constraints on them
(``trial.set_constraint``, <= 0 is feasible): quality kept relative to the baseline, and above
the trivial predictor. Pure functions of the experiment and the numbers."""

from __future__ import annotations

from typing import Any

from greenknobs.config import Experiment


def relative_figures(exp: Experiment, energy_j: float, quality: float | None, base_energy_j: float,
                     base_quality: float | None) -> dict[str, Any]:
    saving = 100.0 * (1.0 - energy_j / base_energy_j) if base_energy_j > 0 else 0.0
    if quality is None or base_quality is None:  # a split the code did not score (test is optional)
        return {"energy_saving_pct": saving, "quality_retained_pct": None}
    if exp.objectives.quality_direction == "maximize":
        retained = quality / base_quality if base_quality else 0.0
    else:
        retained = base_quality / quality if quality else 0.0
    return {"energy_saving_pct": saving, "quality_retained_pct": 100.0 * retained}


def trivial_bar(exp: Experiment, trivial: float) -> float:
    """The quality a trial must reach to count as better than trivial.

    maximise (F1, accuracy): trivial + margin, the margin in the metric's own units;
    minimise (perplexity): trivial x (1 - margin), the margin a fraction -- an absolute margin
    means nothing across perplexities that differ by orders of magnitude.
    """
    margin = exp.constraints.beat_trivial_by or 0.0
    if exp.objectives.quality_direction == "maximize":
        return trivial + margin
    return trivial * (1.0 - margin)


def constraint_names(exp: Experiment) -> list[str]:
    """The Optuna constraints this experiment sets on every trial."""
    return list(constraint_values(exp, quality=0.0, trivial=0.0, retained_pct=0.0))


def constraint_values(exp: Experiment, quality: float, trivial: float | None, retained_pct: float) -> dict[str, float]:
    """Optuna constraints on validation figures, <= 0 feasible."""
    c = exp.constraints
    out = {}
    if c.min_quality_retained is not None:
        out["quality_retained"] = c.min_quality_retained - retained_pct / 100.0
    if c.beat_trivial_by is not None and trivial is not None:
        bar = trivial_bar(exp, trivial)
        out["beat_trivial"] = bar - quality if exp.objectives.quality_direction == "maximize" else quality - bar
    return out
