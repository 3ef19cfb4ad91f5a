"""A model of a trial's attributed energy from its knob values, fitted on the study's own trials.

Energy compounds multiplicatively across knobs (the seed study's 1 - prod(1 - s_i) held within a
point), so the model is linear in log-energy: log E = a + sum_k b_k f_k(values), with f_k a knob's
value (its log where its space is logarithmic, or a value that multiplies cost: fractions, lengths,
counts) or a one-hot of a categorical choice. Ridge-regularised, so it fits from a handful of trials.
Its error is measured honestly: leave-one-out over the trials it was fitted on (median and largest
absolute relative error), and reported beside every use (the budget promise, successive halving).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from greenknobs.config import Experiment

MIN_TRIALS = 4  # below this, no model: nothing is decided on a prediction
RIDGE = 0.3


@dataclass
class Features:
    """How knob values become regressors."""

    columns: list[tuple[str, Any]]  # (knob, None: numeric | a choice: one-hot)
    logs: set[str]

    @classmethod
    def of(cls, exp: Experiment) -> Features:
        columns: list[tuple[str, Any]] = []
        logs: set[str] = set()
        for s in exp.searched_knobs:
            space = s.space
            assert space is not None
            if space.choices is not None and not all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                     for c in space.choices):
                columns += [(s.name, c) for c in space.choices[1:]]  # one-hot, the first choice as reference
            else:
                columns.append((s.name, None))
                numeric = [c for c in (space.choices or (space.low, space.high)) if c is not None]
                if space.log or (numeric and min(numeric) > 0 and max(numeric) / min(numeric) >= 4):
                    logs.add(s.name)
        return cls(columns, logs)

    def row(self, values: dict[str, Any]) -> list[float]:
        out = []
        for name, choice in self.columns:
            v = values.get(name)
            if choice is not None:
                out.append(1.0 if v == choice else 0.0)
            else:
                x = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0
                out.append(math.log(x) if name in self.logs and x > 0 else x)
        return out


@dataclass
class EnergyModel:
    features: Features
    coef: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    trials: int
    loo_median_error: float  # leave-one-out, |predicted - measured| / measured
    loo_max_error: float

    def predict(self, values: dict[str, Any]) -> float:
        x = (np.asarray(self.features.row(values)) - self.center) / self.scale
        return float(math.exp(self.coef[0] + x @ self.coef[1:]))

    def describe(self) -> str:
        return (f"energy model on {self.trials} trials: leave-one-out error median {self.loo_median_error:.0%}, "
                f"largest {self.loo_max_error:.0%}")

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "loo_median_error": self.loo_median_error, "loo_max_error": self.loo_max_error}


def _solve(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ridge least squares with an unpenalised intercept."""
    design = np.hstack([np.ones((len(x), 1)), x])
    penalty = RIDGE * np.eye(design.shape[1])
    penalty[0, 0] = 0.0
    return np.linalg.solve(design.T @ design + penalty, design.T @ y)


def fit(exp: Experiment, observed: Sequence[tuple[dict[str, Any], float]]) -> EnergyModel | None:
    """The model from (knob values, attributed energy) of trials that ran to the end; None with too few."""
    data = [(v, e) for v, e in observed if e and e > 0]
    if len(data) < MIN_TRIALS:
        return None
    features = Features.of(exp)
    raw = np.asarray([features.row(v) for v, _ in data], dtype=float)
    center, scale = raw.mean(0), raw.std(0)
    scale[scale == 0] = 1.0
    x, y = (raw - center) / scale, np.log([e for _, e in data])
    errors = []
    for i in range(len(data)):  # leave one out: the error a prediction for an unseen trial has
        keep = np.arange(len(data)) != i
        c = _solve(x[keep], y[keep])
        predicted = math.exp(c[0] + x[i] @ c[1:])
        errors.append(abs(predicted - data[i][1]) / data[i][1])
    return EnergyModel(features, _solve(x, y), center, scale, len(data), statistics.median(errors), max(errors))


def prequential_errors(exp: Experiment, observed: Sequence[tuple[dict[str, Any], float]]) -> list[float]:
    """Each trial predicted from the trials before it, as the search predicted it: the error on
    combinations the model had not seen (|predicted - measured| / measured, in trial order)."""
    errors = []
    for i in range(MIN_TRIALS, len(observed)):
        model = fit(exp, observed[:i])
        values, measured = observed[i]
        if model is not None and measured and measured > 0:
            errors.append(abs(model.predict(values) - measured) / measured)
    return errors
