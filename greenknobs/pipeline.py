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


def run_trial(
    pipeline: Pipeline,
    knob_values: list[tuple[Knob, Any]],
    meter: EnergyMeter,
    runtime: Runtime,
    seed: int,
    progress: ProgressFn | None = None,
) -> TrialResult:
    """Run every phase with its knobs applied, one meter window per phase, then verify every knob.

    Raises IncompatibleKnobs before anything runs if a value cannot work on ``runtime``;
    KnobError if a knob's verification shows it did not take effect.
    """
    for knob, value in knob_values:
        knob.check(value, runtime)
    unknown = [k.name for k, _ in knob_values if k.name not in pipeline.knobs]
    if unknown:
        raise ConfigError(f"knobs.{unknown[0]}", f"not supported by pipeline {pipeline.name!r}")

    seed_everything(seed)
    ctx = TrialContext(runtime, seed)
    results: dict[str, PhaseResult] = {}
    for phase in PHASES:
        phase_knobs = [(k, v) for k, v in knob_values if k.phase == phase]
        ctx.phase = phase
        ctx._apply_hook = lambda pk=phase_knobs: [k.apply(ctx, v) for k, v in pk]
        with meter.window(phase) as window:
            getattr(pipeline, phase)(ctx)
            runtime.synchronize()
        ctx._apply_hook = None
        if phase not in ctx._applied_phases:
            raise RuntimeError(f"pipeline {pipeline.name!r} never called ctx.apply_knobs() in phase {phase!r}")
        results[phase] = PhaseResult(phase, window.measurement, ctx.phase_details.get(phase, {}))
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
    )
