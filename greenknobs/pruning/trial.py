"""Run layer pruning inside a trial's model phase, with the settings the pruning knobs stored."""

from __future__ import annotations

import copy
from typing import Any

from greenknobs.errors import KnobError
from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.pruning.calibration import build_calibration
from greenknobs.pruning.healing import heal
from greenknobs.pruning.methods import prune
from greenknobs.pruning.scores import task_of

# ctx.settings key -> value used when the experiment does not set that knob
DEFAULTS: dict[str, Any] = {
    "pruning_method": "top", "pruning_iterative": False, "pruning_compensation": False,
    "calibration_samples": 32, "healing_steps": 0, "healing_lambda": 0.5, "healing_temperature": 2.0,
    "healing_entropy_weight": False,
}


def setting(ctx, key: str) -> Any:
    return ctx.settings.get(key, DEFAULTS[key])


def prune_in_trial(ctx, n_remove: int) -> dict[str, Any]:
    """Prune ``ctx.model`` in place; return the report (with modelled energy) for logging and verify."""
    method, iterative, comp = setting(ctx, "pruning_method"), setting(ctx, "pruning_iterative"), setting(ctx, "pruning_compensation")
    heal_steps = setting(ctx, "healing_steps")
    needs_data = method not in ("top", "bottom") or comp or heal_steps > 0
    train = getattr(ctx, "train", None)
    if needs_data and not train:
        raise KnobError(f"pruning method {method!r} needs calibration data, but the pipeline has no ctx.train")
    pad_id = getattr(ctx, "pad_id", 0) or 0
    calibration = build_calibration(train, pad_id, setting(ctx, "calibration_samples"), seed=ctx.seed) if needs_data else None
    dev = None
    if method == "iterative_metric":
        validation = getattr(ctx, "validation", None)
        if not validation:
            raise KnobError("pruning method 'iterative_metric' scores on a dev set, but the validation split is empty")
        dev = build_calibration(validation, pad_id, 64, seed=ctx.seed)
    teacher = copy.deepcopy(ctx.model) if heal_steps > 0 else None
    meter = CpuModelMeter()
    with meter.window("select") as w:
        report = prune(ctx.model, n_remove, method, iterative=iterative, compensation_on=comp,
                       calibration=calibration, dev=dev, seed=ctx.seed).to_dict()
    report["energy_j_modelled"] = w.measurement.energy_j
    report["dev_samples"] = dev.n_samples if dev else 0
    report["healing"] = None
    if heal_steps > 0:
        heal_data = build_calibration(train, pad_id, 8 * heal_steps, seed=ctx.seed + 1)
        with meter.window("heal") as hw:
            report["healing"] = heal(ctx.model, teacher, heal_data, heal_steps, task_of(ctx.model),
                                     lam=setting(ctx, "healing_lambda"), temperature=setting(ctx, "healing_temperature"),
                                     entropy_weighted=setting(ctx, "healing_entropy_weight"), held_out=calibration)
        report["healing"]["energy_j_modelled"] = hw.measurement.energy_j
        del teacher
    return report
