"""The five-phase pipeline contract, the pipeline registry, and the trial runner.

A pipeline implements one method per phase. Each phase runs inside one energy-meter window and
must call ``ctx.apply_knobs()`` once, at the point where that phase's knobs can act (after the
data is read, after the model is loaded, ...). The runner refuses a phase that forgot to, so a
knob can never be silently skipped.

Pipelines are found by name: the ``greenknobs.pipelines`` entry-point group (the built-in ones
register there in pyproject.toml; a user's package can do the same) or a ``module:Class`` path.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

from greenknobs.context import TrialContext
from greenknobs.errors import ConfigError
from greenknobs.knobs.base import Knob
from greenknobs.knobs.compat import check_trial
from greenknobs.meters.base import EnergyMeter
from greenknobs.meters.noise import measure_phase
from greenknobs.phase_store import BOUNDARIES, PhaseStore, digest
from greenknobs.phases import PHASES, SPLITS, PhaseResult, TrialResult
from greenknobs.runtime import (
    Runtime,
    machine,
    process_state,
    reset_process_state,
    rng_state,
    seed_everything,
    set_rng_state,
)

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

    @classmethod
    def check_inputs(cls, options: dict[str, Any], seed: int) -> dict[str, Any]:
        """Read what the trials will read (dataset files), the way they will, so a bad input fails
        before a search starts, not inside trial 0. Returns a summary for ``validate``."""
        return {}

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this pipeline's data and model beyond its options (file sizes and times,
        package versions), for phase-output reuse keys. Override when options name files."""
        return {}

    def warmup_options(self) -> dict[str, Any] | None:
        """Options for a small run that pays a process's one-off costs (imports, first model and
        tokenizer loads, kernel initialisation) before the first measured trial, so trial 0 -- the
        baseline every saving is relative to -- is not inflated by them. None: no warm-up."""
        return None

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


@functools.cache
def _code_version(pipeline_module: str) -> str:
    """A hash of the code that produces phase outputs: the pipeline's module and the library's ml/
    and knobs/ packages (an edited training loop must not reuse models the old one trained)."""
    files = [Path(__file__).parent / sub for sub in ("ml", "knobs")]
    sources = sorted(f for folder in files for f in folder.rglob("*.py"))
    module = importlib.import_module(pipeline_module)
    if getattr(module, "__file__", None):
        sources.append(Path(module.__file__))  # type: ignore[arg-type]
    h = hashlib.sha256()
    for f in sources:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def reuse_keys(pipeline: Pipeline, knob_values: list[tuple[Knob, Any]], runtime: Runtime, meter: EnergyMeter,
               seed: int) -> dict[str, str]:
    """Boundary phase -> the key of the state after it: a chain of output keys (each phase's
    knobs that affect output on top of the previous phase's key) extended by what changes the
    cost up to that point (phase_store.py)."""
    from importlib.metadata import PackageNotFoundError, version

    libs: dict[str, str | None] = {}
    for name in ("greenknobs", "torch", "transformers", "peft"):
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            libs[name] = None
    cls = type(pipeline)
    output = digest({"pipeline": f"{cls.__module__}.{cls.__qualname__}", "code": _code_version(cls.__module__),
                     "options": pipeline.options, "fingerprint": pipeline.fingerprint(), "seed": seed,
                     "libraries": libs})
    where = {"machine": {key: val for key, val in machine().items() if key in ("cpu", "cores", "gpus")},
             "device": runtime.device, "meter": meter.label, "meter_params": meter.params()}
    cost_only: dict[str, Any] = {}
    keys = {}
    for phase in PHASES[:PHASES.index(BOUNDARIES[-1]) + 1]:
        mine = [(k, v) for k, v in knob_values if k.phase == phase]
        output = digest({"previous": output, "phase": phase, "knobs": {k.name: v for k, v in mine if k.affects_output}})
        cost_only.update({k.name: v for k, v in mine if not k.affects_output})
        if phase in BOUNDARIES:
            keys[phase] = digest({"output": output, "cost_only_knobs": cost_only, **where})
    return keys


def _publish(store: PhaseStore, key: str, ctx: TrialContext, results: dict[str, PhaseResult], meter: EnergyMeter,
             reuse: dict[str, Any], info: dict[str, Any]) -> None:
    """Store the state after a boundary phase (in its own meter window: the search pays for it)."""
    boundary = info["boundary"]
    if store.has(key):
        return
    state = rng_state()  # taken before anything else can draw from the generators
    done = {p: results[p] for p in PHASES[:PHASES.index(boundary) + 1] if p in results}
    with meter.window(f"reuse.publish.{boundary}") as pub:
        try:
            outcome: bool | str = store.publish(key, ctx, done, info, rng=state)
        except Exception as exc:  # e.g. a compiled model cannot be pickled: the trial goes on, unstored
            store.release(key)
            outcome = f"not stored: {type(exc).__name__}: {exc}"
    reuse["published"][boundary] = outcome
    reuse["publish_j"] += pub.measurement.energy_j


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
    store: PhaseStore | None = None,
    progress_check: Callable[[float, Callable[[], float]], None] | None = None,
    trial_number: int | None = None,
) -> tuple[TrialResult, TrialContext]:
    """Run every phase with its knobs applied, one meter window per phase, then verify every knob.
    Returns the result and the context the phases left (what verify read: tests re-judge it).

    ``repeats`` measures the pipeline's repeatable phases (inference) that many times and keeps
    median and spread; a repeatable phase shorter than the meter resolves runs several times in
    one window; other short phases are flagged ``below_resolution`` (see meters/noise.py).
    ``idle_power`` ({"watts", "meter", "provenance", ...} from noise.measure_idle_power) and ``carbon_intensity``
    ({"g_per_kwh", "source", "pue"}, see meters/carbon.py) are carried into the result.
    Every knob's ``release`` runs afterwards, whether the trial succeeded or not.
    ``store``: phase-output reuse (phase_store.py): the trained state of an identical earlier
    trial is loaded instead of rebuilt; ``progress_check(fraction, validate)`` is called by the
    training loop as it passes fractions of its steps (the search stops hopeless trials with it).

    Raises IncompatibleKnobs before anything runs if a value cannot work on ``runtime``;
    KnobError if a knob's verification shows it did not take effect.
    """
    check_trial(pipeline, knob_values, runtime)  # single values, then combinations, then the pipeline's own limits
    unknown = [k.name for k, _ in knob_values if k.name not in pipeline.knobs]
    if unknown:
        raise ConfigError(f"knobs.{unknown[0]}", f"not supported by pipeline {pipeline.name!r}")

    reset = reset_process_state()  # every trial starts from the same process state, whatever ran before
    seed_everything(seed)
    ctx = TrialContext(runtime, seed, meter=meter, progress_check=progress_check)
    results: dict[str, PhaseResult] = {}
    start_state = process_state()
    reuse: dict[str, Any] = {"status": "off"}
    to_run: tuple[str, ...] = PHASES
    keys: dict[str, str] = {}
    if store is not None:
        keys = reuse_keys(pipeline, knob_values, runtime, meter, seed)
        waited = time.monotonic()
        if store.wait_for(keys["training"]):  # another worker is training this very combination: its model, soon
            reuse["waited_s"] = time.monotonic() - waited
        with meter.window("reuse.load") as load:
            found = store.load_deepest(keys)
        spent = load.measurement.energy_j
        if found is not None:
            boundary, entry = found
            ctx = entry.ctx
            ctx.meter, ctx.progress_check = meter, progress_check
            if entry.rng is not None:
                set_rng_state(entry.rng)
            # the phases up to the boundary are not run again, except system (it sets this process up)
            reused = [p for p in PHASES[:PHASES.index(boundary) + 1] if p != "system"]
            ctx.applied_phases -= {"system", "inference"}
            for phase in reused:  # attributed: what building them cost; spent: the load, on the last one
                results[phase] = PhaseResult(phase, entry.phases[phase].measurement, {
                    **entry.phases[phase].details, "reused": {"from_trial": entry.manifest.get("trial"), "key": keys[boundary]},
                    "spent_j": spent if phase == reused[-1] else 0.0})
                if progress:
                    progress(phase, results[phase])
            to_run = tuple(p for p in PHASES if p not in reused)
            reuse = {**reuse, "status": "reused", "boundary": boundary, "phases": reused, "key": keys[boundary],
                     "from_trial": entry.manifest.get("trial"), "load_j": spent,
                     "load_provenance": load.measurement.provenance}
        else:
            reuse = {**reuse, "status": "built", "load_j": spent}
        # claimed while it trains: a worker given the same combination meanwhile waits for it (wait_for above)
        if "training" in to_run and not store.claim(keys["training"]):
            reuse["training_entry"] = "claimed by another worker meanwhile: both build it, one copy is kept"
        reuse.update(published={}, publish_j=0.0)
    try:
        for phase in to_run:
            state = process_state()
            phase_knobs = sorted(((k, v) for k, v in knob_values if k.phase == phase), key=lambda kv: kv[0].order)
            run = _phase_run(pipeline, ctx, runtime, phase, phase_knobs)

            def aborted(m, phase=phase):  # what a failing phase spent still reaches the caller (search cost)
                if progress:
                    progress(phase, PhaseResult(phase, m, {"aborted": True}))

            measurement, facts = measure_phase(meter, phase, run, repeatable=phase in pipeline.repeatable_phases,
                                               repeats=repeats, spread_warning=spread_warning, on_abort=aborted)
            details = {**ctx.phase_details.get(phase, {}), "measurement": facts, "process_state_at_start": state}
            results[phase] = PhaseResult(phase, measurement, details)
            if progress:
                progress(phase, results[phase])
            if store is not None and phase in BOUNDARIES:
                _publish(store, keys[phase], ctx, results, meter, reuse, {"pipeline": pipeline.name,
                                                                          "trial": trial_number, "boundary": phase})
        ctx.phase = None
        missing = [split for split in SPLITS if not ctx.quality.get(split)]
        if missing:
            raise RuntimeError(f"pipeline {pipeline.name!r} scored no {' or '.join(missing)} split: its inference phase must "
                               "fill ctx.quality['validation'] (searched) and ctx.quality['test'] (held out)")
        verifications = {k.name: {"value": v, **k.verify(ctx, v)} for k, v in knob_values}
    finally:
        if store is not None and keys and "training" not in reuse.get("published", {}):
            store.release(keys["training"])  # the trial failed before its training finished: let others build it
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
        reuse=reuse,
    ), ctx
