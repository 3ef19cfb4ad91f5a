"""The five-phase pipeline contract, the pipeline registry, and the trial runner.

A pipeline implements one method per phase. Each phase runs inside one energy-meter window and
must call ``ctx.apply_knobs()`` once, at the point where that phase's knobs can act (after the
data is read, after the model is loaded, ...). The runner refuses a phase that forgot to, so a
knob can never be silently skipped.

Pipelines are found by name: the ``greenknobs.pipelines`` entry-point group (the built-in ones
register there in pyproject.toml; a user's package can do the same) or a ``module:Class`` path.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, ClassVar

from greenknobs.context import TrialContext
from greenknobs.errors import ConfigError
from greenknobs.knobs.base import Knob
from greenknobs.knobs.compat import check_trial
from greenknobs.meters.base import EnergyMeter
from greenknobs.meters.noise import measure_phase
from greenknobs.phases import PHASES, SPLITS, PhaseResult, TrialResult
from greenknobs.runtime import Runtime, process_state, reset_process_state, seed_everything

ProgressFn = Callable[[str, PhaseResult], None]
ENTRY_POINT_GROUP = "greenknobs.pipelines"


class Pipeline(ABC):
    """A concrete five-phase pipeline. Options come from the experiment's ``pipeline:`` block."""

    name: ClassVar[str]
    knobs: ClassVar[tuple[str, ...]]  # knob names this pipeline honours
    metrics: ClassVar[dict[str, str]]  # quality metric -> "maximize" | "minimize"
    default_metric: ClassVar[str]
    # quality metric -> the key holding a trivial predictor's score (majority class, uniform LM)
    trivial_metrics: ClassVar[dict[str, str]] = {}
    # Phases that may run several times on the same state (repeats, short windows): each run
    # starts from the context as it was before the phase's first run (fields rebound by a knob,
    # e.g. a quantised ``ctx.model``, are restored; in-place changes are not).
    repeatable_phases: ClassVar[tuple[str, ...]] = ("inference",)

    def __init__(self, options: dict[str, Any]):
        self.options = options

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Return normalised options or raise ConfigError naming the key (``pipeline.<key>``)."""
        return options

    def check_knobs(self, values: dict[str, Any], runtime: Runtime) -> None:
        """Raise IncompatibleKnobs for combinations this pipeline cannot run (before anything runs)."""

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


# -- the registry ----------------------------------------------------------------------------------
def registered_pipelines() -> dict[str, str]:
    """Pipeline name -> ``module:Class`` for every pipeline registered under the entry-point group."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def pipeline_class(name: str) -> type[Pipeline]:
    """A registered pipeline name, or ``module:Class`` for one that is not registered."""
    registered = registered_pipelines()
    path = registered.get(name, name)
    module_name, _, class_name = path.partition(":")
    if not class_name:
        known = ", ".join(sorted(registered)) or "none (is greenknobs installed? pip install -e .)"
        raise ConfigError("pipeline.name", f"unknown pipeline {name!r}; registered: {known}; or give module:Class")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("pipeline.name", f"cannot import {path!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
        raise ConfigError("pipeline.name", f"{path!r} is not a greenknobs Pipeline")
    return cls


# -- the trial runner ---------------------------------------------------------------------------------
def _phase_run(pipeline: Pipeline, ctx: TrialContext, runtime: Runtime, phase: str,
               phase_knobs: list[tuple[Knob, Any]]) -> Callable[[], None]:
    """One run of a phase; later runs restore the context fields the first run started from."""
    snapshot = ctx.snapshot()

    def run() -> None:
        if phase in ctx.applied_phases:  # a repeat: start again from the same state
            ctx.restore(snapshot)
        def apply_all() -> None:
            for knob, value in phase_knobs:
                knob.apply(ctx, value)

        ctx.phase = phase
        ctx.apply_hook = apply_all
        getattr(pipeline, phase)(ctx)
        runtime.synchronize()
        ctx.apply_hook = None
        if phase not in ctx.applied_phases:
            raise RuntimeError(f"pipeline {pipeline.name!r} never called ctx.apply_knobs() in phase {phase!r}")

    return run


def _release_all(knob_values: list[tuple[Knob, Any]], ctx: TrialContext) -> None:
    """Every knob gives back what it took, even when another one's release fails."""
    errors = []
    for knob, value in knob_values:
        try:
            knob.release(ctx, value)
        except Exception as exc:
            errors.append(f"{knob.name}: {type(exc).__name__}: {exc}")
    if errors:
        raise RuntimeError("releasing knobs failed: " + "; ".join(errors))


def run_trial(*args: Any, **kwargs: Any) -> TrialResult:
    """Run one trial (see ``execute_trial``) and return what it produced."""
    return execute_trial(*args, **kwargs)[0]


def execute_trial(
    pipeline: Pipeline,
    knob_values: list[tuple[Knob, Any]],
    meter: EnergyMeter,
    runtime: Runtime,
    seed: int,
    progress: ProgressFn | None = None,
    *,
    repeats: int = 1,
    spread_warning: float = 0.10,
    idle_power: dict[str, Any] | None = None,
    carbon_intensity: dict[str, Any] | None = None,
) -> tuple[TrialResult, TrialContext]:
    """Run every phase with its knobs applied, one meter window per phase, then verify every knob.
    Returns the result and the context the phases left (what verify read: tests re-judge it).

    ``repeats`` measures the pipeline's repeatable phases (inference) that many times and keeps
    median and spread; a repeatable phase shorter than the meter resolves runs several times in
    one window; other short phases are flagged ``below_resolution`` (see meters/noise.py).
    ``idle_power`` ({"watts", "meter", "provenance", ...} from noise.measure_idle_power) and ``carbon_intensity``
    ({"g_per_kwh", "source", "pue"}, see meters/carbon.py) are carried into the result.
    Every knob's ``release`` runs afterwards, whether the trial succeeded or not.

    Raises IncompatibleKnobs before anything runs if a value cannot work on ``runtime``;
    KnobError if a knob's verification shows it did not take effect.
    """
    check_trial(pipeline, knob_values, runtime)  # single values, then combinations, then the pipeline's own limits
    unknown = [k.name for k, _ in knob_values if k.name not in pipeline.knobs]
    if unknown:
        raise ConfigError(f"knobs.{unknown[0]}", f"not supported by pipeline {pipeline.name!r}")

    reset = reset_process_state()  # every trial starts from the same process state, whatever ran before
    seed_everything(seed)
    ctx = TrialContext(runtime, seed, meter=meter)
    results: dict[str, PhaseResult] = {}
    start_state = process_state()
    try:
        for phase in PHASES:
            state = process_state()
            phase_knobs = sorted(((k, v) for k, v in knob_values if k.phase == phase), key=lambda kv: kv[0].order)
            run = _phase_run(pipeline, ctx, runtime, phase, phase_knobs)
            measurement, facts = measure_phase(meter, phase, run, repeatable=phase in pipeline.repeatable_phases,
                                               repeats=repeats, spread_warning=spread_warning)
            details = {**ctx.phase_details.get(phase, {}), "measurement": facts, "process_state_at_start": state}
            results[phase] = PhaseResult(phase, measurement, details)
            if progress:
                progress(phase, results[phase])
        ctx.phase = None
        missing = [split for split in SPLITS if not ctx.quality.get(split)]
        if missing:
            raise RuntimeError(f"pipeline {pipeline.name!r} scored no {' or '.join(missing)} split: its inference phase must "
                               "fill ctx.quality['validation'] (searched) and ctx.quality['test'] (held out)")
        verifications = {k.name: {"value": v, **k.verify(ctx, v)} for k, v in knob_values}
    finally:
        _release_all(knob_values, ctx)
    return TrialResult(
        knob_values={k.name: v for k, v in knob_values},
        phases=results,
        quality={split: dict(scores) for split, scores in ctx.quality.items()},
        samples=dict(ctx.samples),
        verifications=verifications,
        idle_power=idle_power,
        carbon_intensity=carbon_intensity,
        process_state={"reset": reset, "at_start": start_state},
    ), ctx
