"""Run layer pruning inside a trial's model phase, with the settings the pruning knobs chose."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from greenknobs.errors import KnobError
from greenknobs.ml.pruning.calibration import build_calibration
from greenknobs.ml.pruning.healing import heal
from greenknobs.ml.pruning.methods import prune
from greenknobs.ml.pruning.scores import task_of


@dataclass(frozen=True)
class PruneOptions:
    method: str = "top"
    iterative: bool = False
    compensation: bool = False
    calibration_samples: int = 32
    healing_steps: int = 0
    healing_lambda: float = 0.5
    healing_temperature: float = 2.0
    healing_entropy_weight: bool = False


@contextlib.contextmanager
def _window(meter, key: str):
    """A window on the trial's meter (nested inside the model phase's own), or nothing without one."""
    if meter is None:
        yield None
        return
    with meter.window(key) as w:
        yield w


def _energy(window) -> dict[str, Any]:
    m = window.measurement if window is not None else None
    return {"energy_j": m.energy_j if m else None, "provenance": m.provenance if m else None,
            "meter": m.meter if m else None}


def prune_in_trial(model, n_remove: int, opts: PruneOptions, *, rows: Sequence[Mapping[str, Any]] | None,
                   pad_id: int, seed: int, meter=None) -> dict[str, Any]:
    """Prune ``model`` in place; return the report (with the energy selection and healing cost,
    measured by the trial's own meter) for logging and verification.

    ``rows``: tokenised training rows (``input_ids``, ``label``) to score layers on. A method that
    scores on a dev set (``iterative_metric``) gets one carved from them -- never the validation
    split, which only the search reads."""
    heal_steps = opts.healing_steps
    needs_data = opts.method not in ("top", "bottom") or opts.compensation or heal_steps > 0
    if needs_data and not rows:
        raise KnobError(f"pruning method {opts.method!r} scores layers on data: hand calibration rows to the trial "
                        "(trial.model(model, calibration=train_rows))")
    rows = list(rows or [])
    dev = None
    if opts.method == "iterative_metric":
        if len(rows) < 16:
            raise KnobError("pruning method 'iterative_metric' scores on a dev set carved from the training rows: "
                            f"{len(rows)} rows are too few")
        carve = max(8, min(64, len(rows) // 5))
        dev = build_calibration(rows[-carve:], pad_id, carve, seed=seed)
        rows = rows[:-carve]
    calibration = build_calibration(rows, pad_id, opts.calibration_samples, seed=seed) if needs_data else None
    teacher = copy.deepcopy(model) if heal_steps > 0 else None
    with _window(meter, "model.pruning.select") as w:
        report = prune(model, n_remove, opts.method, iterative=opts.iterative, compensation_on=opts.compensation,
                       calibration=calibration, dev=dev, seed=seed).to_dict()
    report["selection_energy"] = _energy(w)
    report["calibration_rows_available"] = len(rows)
    report["dev_samples"] = dev.n_samples if dev else 0
    report["healing"] = None
    if heal_steps > 0:
        heal_data = build_calibration(rows, pad_id, 8 * heal_steps, seed=seed + 1)
        with _window(meter, "model.pruning.heal") as hw:
            report["healing"] = heal(model, teacher, heal_data, heal_steps, task_of(model),
                                     lam=opts.healing_lambda, temperature=opts.healing_temperature,
                                     entropy_weighted=opts.healing_entropy_weight, held_out=calibration)
        report["healing"]["energy"] = _energy(hw)
        del teacher
    return report
