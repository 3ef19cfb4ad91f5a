"""The five-phase pipeline contract and the trial runner.

A pipeline implements one method per phase. Each phase runs inside one energy-meter window and
must call ``ctx.apply_knobs()`` once, at the point where that phase's knobs can act (after the
data is read, after the model is loaded, ...). The runner refuses a phase that forgot to, so a
knob can never be silently skipped.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import torch

from greenknobs.context import TrialContext
from greenknobs.errors import ConfigError
from greenknobs.knobs.base import Knob
from greenknobs.meters.base import EnergyMeter
from greenknobs.noise import measure_phase
from greenknobs.phases import PHASES, PhaseResult, TrialResult
from greenknobs.runtime import Runtime

ProgressFn = Callable[[str, PhaseResult], None]


class Pipeline(ABC):
    """A concrete five-phase pipeline. Options come from the experiment's ``pipeline:`` block."""

    name: ClassVar[str]
    knobs: ClassVar[tuple[str, ...]]  # knob names this pipeline honours
    metrics: ClassVar[dict[str, str]]  # quality metric -> "maximize" | "minimize"
    default_metric: ClassVar[str]
    # quality metric -> the key holding a trivial predictor's score (majority class, uniform LM)
    trivial_metrics: ClassVar[dict[str, str]] = {}
    # Phases that may run several times on the same state (repeats, short windows): each run
    # starts from the context as it was before the phase's first run (attributes rebound by a
    # knob, e.g. a quantised ``ctx.model``, are restored; in-place changes are not).
    repeatable_phases: ClassVar[tuple[str, ...]] = ("inference",)

    def __init__(self, options: dict[str, Any]):
        self.options = options

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Return normalised options or raise ConfigError naming the key (``pipeline.<key>``)."""
        return options

    @abstractmethod
    def data(self, ctx: TrialContext) -> None: ...

    @abstractmethod
    def model(self, ctx: TrialContext) -> None: ...

    @abstractmethod
    def system(self, ctx: TrialContext) -> None: ...

    @abstractmethod
    def training(self, ctx: TrialContext) -> None: ...

    @abstractmethod
    def inference(self, ctx: TrialContext) -> None: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _phase_run(pipeline: Pipeline, ctx: TrialContext, runtime: Runtime, phase: str,
               phase_knobs: list[tuple[Knob, Any]]) -> Callable[[], None]:
    """One run of a phase; later runs restore the context attributes the first run started from."""
    snapshot = {**vars(ctx), "settings": dict(ctx.settings)}

    def run() -> None:
        if phase in ctx._applied_phases:  # a repeat: start again from the same state
            vars(ctx).update({**snapshot, "settings": dict(snapshot["settings"])})
            ctx._applied_phases.discard(phase)
        ctx.phase = phase
        ctx._apply_hook = lambda: [k.apply(ctx, v) for k, v in phase_knobs]
        getattr(pipeline, phase)(ctx)
        runtime.synchronize()
        ctx._apply_hook = None
        if phase not in ctx._applied_phases:
            raise RuntimeError(f"pipeline {pipeline.name!r} never called ctx.apply_knobs() in phase {phase!r}")

    return run


def run_trial(
    pipeline: Pipeline,
    knob_values: list[tuple[Knob, Any]],
    meter: EnergyMeter,
    runtime: Runtime,
    seed: int,
    progress: ProgressFn | None = None,
    *,
    repeats: int = 1,
    spread_warning: float = 0.10,
    idle_power_w: float | None = None,
    carbon_intensity: dict[str, Any] | None = None,
) -> TrialResult:
    """Run every phase with its knobs applied, one meter window per phase, then verify every knob.

    ``repeats`` measures the pipeline's repeatable phases (inference) that many times and keeps
    median and spread; a repeatable phase shorter than the meter resolves runs several times in
    one window; other short phases are flagged ``below_resolution`` (see greenknobs/noise.py).
    ``idle_power_w`` (from noise.measure_idle_power) and ``carbon_intensity``
    ({"g_per_kwh", "source", "pue"}, see greenknobs/carbon.py) are carried into the result.

    Raises IncompatibleKnobs before anything runs if a value cannot work on ``runtime``;
    KnobError if a knob's verification shows it did not take effect.
    """
    from greenknobs.knobs.compat import check_trial

    check_trial(pipeline, knob_values, runtime)  # single values, then combinations, then the pipeline's own limits
    unknown = [k.name for k, _ in knob_values if k.name not in pipeline.knobs]
    if unknown:
        raise ConfigError(f"knobs.{unknown[0]}", f"not supported by pipeline {pipeline.name!r}")

    seed_everything(seed)
    ctx = TrialContext(runtime, seed)
    results: dict[str, PhaseResult] = {}
    for phase in PHASES:
        phase_knobs = sorted(((k, v) for k, v in knob_values if k.phase == phase), key=lambda kv: kv[0].order)
        run = _phase_run(pipeline, ctx, runtime, phase, phase_knobs)
        measurement, facts = measure_phase(meter, phase, run, repeatable=phase in pipeline.repeatable_phases,
                                           repeats=repeats, spread_warning=spread_warning)
        details = {**ctx.phase_details.get(phase, {}), "measurement": facts}
        results[phase] = PhaseResult(phase, measurement, details)
        if progress:
            progress(phase, results[phase])
    ctx.phase = None
    verifications = {k.name: {"value": v, **k.verify(ctx, v)} for k, v in knob_values}
    return TrialResult(
        knob_values={k.name: v for k, v in knob_values},
        phases=results,
        quality=dict(ctx.quality),
        samples=dict(ctx.samples),
        verifications=verifications,
        idle_power_w=idle_power_w,
        carbon_intensity=carbon_intensity,
    )
