"""Run layer pruning inside a trial's model phase, with the settings the pruning knobs chose."""

from __future__ import annotations

import contextlib
import copy
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


def prune_in_trial(ctx, n_remove: int, opts: PruneOptions) -> dict[str, Any]:
    """Prune ``ctx.model`` in place; return the report (with the energy selection and healing cost,
    measured by the trial's own meter) for logging and verification."""
    heal_steps = opts.healing_steps
    needs_data = opts.method not in ("top", "bottom") or opts.compensation or heal_steps > 0
    if needs_data and not ctx.train:
        raise KnobError(f"pruning method {opts.method!r} needs calibration data, but the pipeline has no ctx.train")
    calibration = build_calibration(ctx.train, ctx.pad_id, opts.calibration_samples, seed=ctx.seed) if needs_data else None
    dev = None
    if opts.method == "iterative_metric":
        if not ctx.validation:
            raise KnobError("pruning method 'iterative_metric' scores on a dev set, but the validation split is empty")
        dev = build_calibration(ctx.validation, ctx.pad_id, 64, seed=ctx.seed)
    teacher = copy.deepcopy(ctx.model) if heal_steps > 0 else None
    with _window(ctx.meter, "model.pruning.select") as w:
        report = prune(ctx.model, n_remove, opts.method, iterative=opts.iterative, compensation_on=opts.compensation,
                       calibration=calibration, dev=dev, seed=ctx.seed).to_dict()
    report["selection_energy"] = _energy(w)
    report["dev_samples"] = dev.n_samples if dev else 0
    report["healing"] = None
    if heal_steps > 0:
        heal_data = build_calibration(ctx.train, ctx.pad_id, 8 * heal_steps, seed=ctx.seed + 1)
        with _window(ctx.meter, "model.pruning.heal") as hw:
            report["healing"] = heal(ctx.model, teacher, heal_data, heal_steps, task_of(ctx.model),
                                     lam=opts.healing_lambda, temperature=opts.healing_temperature,
                                     entropy_weighted=opts.healing_entropy_weight, held_out=calibration)
        report["healing"]["energy"] = _energy(hw)
        del teacher
    return report
