"""Pipelines: your own code as one function of a trial (define-by-run), or the five-phase class.

A pipeline runs one trial on a ``greenknobs.trial.Trial``: it asks for knob values, opens one
measured window per phase it has, hands its objects (model, tokenizer, loaders, optimizer,
TrainingArguments) to the trial so the knobs act on them, and reports validation and test quality.

* ``FunctionPipeline``: ``pipeline: {function: module:fn}`` (``fn(trial)``) or ``{script: train.py}``
  (a script that asks ``greenknobs.current_trial()``) -- code you already have, a few lines changed.
* ``Pipeline`` subclasses with five phase methods (``data``, ``model``, ``system``, ``training``,
  ``inference``) that call ``ctx.apply_knobs()`` once each: a thin adapter runs them on the trial.
  A subclass may instead override ``run(trial)`` and be written like a function pipeline (the
  text-classification pipeline is).

Pipelines are found by name: the ``greenknobs.pipelines`` entry-point group (the built-in ones
register there in pyproject.toml; a user's package can do the same) or a ``module:Class`` path.
"""

from __future__ import annotations

import importlib
import runpy
import shutil
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

from greenknobs import fingerprint
from greenknobs.context import TrialContext
from greenknobs.errors import ConfigError, TrialUsageError
from greenknobs.knobs.base import Knob
from greenknobs.knobs.compat import check_trial
from greenknobs.meters.base import EnergyMeter
from greenknobs.phase_store import BOUNDARIES, PhaseStore, ReuseSession, digest
from greenknobs.phases import PHASES, SPLITS, PhaseResult, TrialResult
from greenknobs.runtime import Runtime, machine, process_state, reset_process_state, seed_everything
from greenknobs.trial import Trial, running

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

    def inputs(self) -> list[str]:
        """The data files and model directories this pipeline's options name (what it will read).
        Files a trial opens are also traced as it runs (greenknobs.fingerprint); this says it upfront."""
        return []

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this pipeline's data and model beyond its options: the content digests of
        its inputs (phase-output reuse keys and the study's staleness check read it)."""
        return {"inputs": fingerprint.digests(self.inputs())}

    def code_files(self) -> list[Path]:
        """The pipeline's own source files (greenknobs' are always part of the code digest)."""
        return fingerprint.code_files(type(self).__module__, self.options.get("folder"))

    def warmup_options(self) -> dict[str, Any] | None:
        """Options for a small run that pays a process's one-off costs (imports, first model and
        tokenizer loads, kernel initialisation) before the first measured trial, so trial 0 -- the
        baseline every saving is relative to -- is not inflated by them. None: no warm-up."""
        return None

    # The experiment's quality metric (set by the search), so a bare returned score has a name.
    objective_metric: str | None = None

    def user_options(self) -> dict[str, Any]:
        """What the code sees as ``trial.options``."""
        return dict(self.options)

    def run(self, trial: Trial) -> Any:
        """Run one trial. The default adapts the five phase methods: each runs as one phase of the
        trial (reusable at the store's boundaries), with ``ctx.apply_knobs()`` acting at its point."""
        trial._adapter = True
        for phase in PHASES:
            method = getattr(self, phase, None)
            if method is None:
                raise TypeError(f"pipeline {self.name!r} defines neither run(trial) nor the phase method {phase}()")
            trial.run_phase(phase, _phase_method(self, trial, phase), repeatable=phase in self.repeatable_phases)
            trial.ctx.phase = None
        return None


class PhasedPipeline(Pipeline):
    """A pipeline written on the trial as user code is, with one method per phase taking the trial
    (``data``, ``model``, ``system``, ``training``) and ``serve(trial, split)``: each phase runs through
    ``trial.run_phase`` (its output reusable by later trials), validation is served in the inference
    phase and the test split in the held-out window, outside the objective. The built-ins are these."""

    def run(self, trial: Trial) -> None:
        trial.run_phase("data", self.data, trial)
        trial.run_phase("model", self.model, trial)
        trial.run_phase("system", self.system, trial)
        trial.run_phase("training", self.training, trial)
        trial.run_phase("inference", self.serve, trial, "validation", repeatable=True)
        if trial.serving_config is not None:
            self.measure_serving(trial)
        with trial.held_out():
            self.serve(trial, "test")

    @abstractmethod
    def data(self, trial: Trial) -> None: ...

    @abstractmethod
    def model(self, trial: Trial) -> None: ...

    @abstractmethod
    def system(self, trial: Trial) -> None: ...

    @abstractmethod
    def training(self, trial: Trial) -> None: ...

    @abstractmethod
    def serve(self, trial: Trial, split: str) -> None: ...

    def measure_serving(self, trial: Trial) -> None:
        """Serving energy at steady state: call ``trial.serving_energy`` with a fixed validation
        workload. A pipeline without it reports inference_per_1k from its scoring window."""


# -- the registry ----------------------------------------------------------------------------------
def registered_pipelines() -> dict[str, str]:
    """Pipeline name -> ``module:Class`` for every pipeline registered under the entry-point group."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def pipeline_class(name: str) -> type[Pipeline]:
    """A registered pipeline name, or ``module:Class`` for one that is not registered."""
    if name == FUNCTION:
        return FunctionPipeline
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


# -- the five-phase adapter ---------------------------------------------------------------------------
def _phase_method(pipeline: Pipeline, trial: Trial, phase: str) -> Callable[[], None]:
    """One run of a five-phase pipeline's phase method; a repeat starts again from the context
    fields the first run started from (a repeatable phase: inference)."""
    ctx = trial.ctx
    snapshot = ctx.snapshot()

    def run() -> None:
        if phase in ctx.applied_phases:  # a repeat: start again from the same state
            ctx.restore(snapshot)
        ctx.phase = phase
        ctx.apply_hook = lambda: _apply_context_knobs(trial, phase)
        getattr(pipeline, phase)(ctx)
        ctx.apply_hook = None
        if phase not in ctx.applied_phases:
            raise RuntimeError(f"pipeline {pipeline.name!r} never called ctx.apply_knobs() in phase {phase!r}")

    return run


def _apply_context_knobs(trial: Trial, phase: str) -> None:
    """``ctx.apply_knobs()`` of a five-phase pipeline: its model is handed over in the model phase
    (the model knobs act on it, as on any handed-over model), then knobs with a context hook act."""
    ctx = trial.ctx
    if phase == "model" and hasattr(ctx.model, "register_forward_pre_hook"):  # a torch model to hand over
        ctx.model = trial.model(ctx.model, calibration=ctx.train or None, pad_id=ctx.pad_id)
    trial.apply_context_knobs(phase)


# -- pipelines written as one function (define-by-run) ---------------------------------------------------
FUNCTION = "function"  # the pipeline name of your own code (``pipeline: {function: ...}`` or ``{script: ...}``)
_IN_PROCESS: dict[str, Callable[[Trial], Any]] = {}  # functions handed to greenknobs.optimize() in this process
_INTERNAL = ("function", "script", "args", "folder", "metric", "direction", "smoke")


def in_process(fn: Callable[[Trial], Any]) -> str:
    """A ``function:`` reference for a function object handed over in Python (``greenknobs.optimize``)."""
    ref = f"<in-process>:{fn.__module__}.{fn.__qualname__}"
    _IN_PROCESS[ref] = fn
    return ref


class FunctionPipeline(Pipeline):
    """Your own training code as a pipeline: ``fn(trial)`` (``pipeline: {function: module:fn}``), or
    a script run as ``__main__`` for each trial that asks ``greenknobs.current_trial()`` (``script:``).
    Options other than ``function``/``script`` reach the code as ``trial.options``. The quality metric
    and its direction come from the experiment's objectives."""

    name = FUNCTION
    knobs: ClassVar[tuple[str, ...]] = ()  # any knob the experiment declares
    any_knob = True
    metrics: ClassVar[dict[str, str]] = {}  # from the experiment's objectives
    default_metric = "macro_f1"
    repeatable_phases = ()

    def __init__(self, options: dict[str, Any], target: Callable[[Trial], Any] | None = None):
        super().__init__(options)
        self._target = target
        metric = options.get("metric") or self.default_metric
        self.objective_metric = metric
        self.metrics = {metric: options.get("direction") or "maximize"}  # type: ignore[misc]
        self.trivial_metrics = {metric: f"trivial_{metric}"}  # type: ignore[misc]

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        given = [k for k in ("function", "script") if options.get(k) is not None]
        if len(given) != 1:
            raise ConfigError("pipeline", "give exactly one of function: module:fn or script: path/to/train.py")
        key = given[0]
        ref = options[key]
        if not isinstance(ref, str) or not ref.strip():
            raise ConfigError(f"pipeline.{key}", f"expected {'module:function' if key == 'function' else 'a script path'}, "
                                                 f"got {ref!r}")
        if key == "function" and not ref.startswith("<in-process>:"):
            load_target(options)  # a bad reference fails now, naming the key, not inside trial 0
        if key == "script":
            args = options.get("args")
            if args is not None and not (isinstance(args, list) and all(isinstance(a, (str, int, float)) for a in args)):
                raise ConfigError("pipeline.args", f"expected a list of command-line arguments, got {args!r}")
            load_target(options)
        return options

    @property
    def label(self) -> str:
        return str(self.options.get("function") or self.options.get("script")
                   or getattr(self._target, "__qualname__", "function"))

    @property
    def code_module(self) -> str | None:
        fn = self.target()
        return getattr(fn, "__module__", None)

    def code_files(self) -> list[Path]:
        files = fingerprint.code_files(self.code_module, self.options.get("folder"))
        script = self.options.get("script")
        if script:
            path = Path(script) if Path(script).is_absolute() else Path(self.options.get("folder") or ".") / script
            files = sorted({*files, path.resolve()})
        return files

    @property
    def smoke_run(self) -> bool:
        """A warm-up or ``validate --smoke`` run: loaders capped to a few batches, training to a few steps."""
        return bool(self.options.get("smoke"))

    def warmup_options(self) -> dict[str, Any]:
        """Your code's one-off costs (imports, first loads) are paid by a smoke run before trial 0."""
        return {**self.options, "smoke": True}

    def target(self) -> Callable[[Trial], Any]:
        if self._target is None:
            self._target = load_target(self.options)
        return self._target

    def run(self, trial: Trial) -> Any:
        return self.target()(trial)

    def user_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if k not in _INTERNAL}


def load_target(options: dict[str, Any]) -> Callable[[Trial], Any]:
    """The code a function pipeline runs: ``module:function`` (the experiment's folder importable),
    or a script path whose module-level code runs once per trial."""
    folder = options.get("folder")
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)  # the experiment's own folder: its modules import as a newcomer expects
    if options.get("script"):
        path = Path(options["script"])
        if not path.is_absolute() and folder:
            path = Path(folder) / path
        if not path.is_file():
            raise ConfigError("pipeline.script", f"no such script: {path}")

        argv = [str(a) for a in options.get("args") or []]

        def run_script(trial: Trial, path: Path = path) -> Any:
            saved = sys.argv
            sys.argv = [str(path), *argv]  # the script's own command line (argparse), from the experiment's args:
            try:
                with running(trial):
                    namespace = runpy.run_path(str(path), run_name="__main__")
            finally:
                sys.argv = saved
            return namespace.get("greenknobs_result")

        run_script.__qualname__ = f"script:{path.name}"
        run_script.__module__ = "__main__"
        return run_script
    ref = options.get("function")
    if ref in _IN_PROCESS:
        return _IN_PROCESS[ref]
    module_name, _, attr = (ref or "").partition(":")
    if not module_name or not attr:
        raise ConfigError("pipeline.function", f"expected 'module:function', got {ref!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        where = f" (looked in {folder} and the installed packages)" if folder else ""
        raise ConfigError("pipeline.function", f"cannot import {ref!r}: {exc}{where}") from None
    if not callable(fn):
        raise ConfigError("pipeline.function", f"{ref!r} is not callable")
    return fn


# -- the trial runner ---------------------------------------------------------------------------------
def run_trial(*args: Any, **kwargs: Any) -> TrialResult:
    """Run one trial (see ``execute_trial``) and return what it produced."""
    return execute_trial(*args, **kwargs)[0]


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
    smoke: bool = False,
    workdir: Path | None = None,
    keep_artifacts: bool = False,
    workers_on_host: int = 1,
    serving: Any = None,
) -> tuple[TrialResult, TrialContext]:
    """Run the pipeline on a ``Trial`` with these knob values, then verify every knob. Returns the
    result and the context the phases left (what verify read: tests re-judge it).

    Each phase is one meter window (greenknobs.trial). ``repeats`` measures the pipeline's
    repeatable phases (inference) that many times and keeps median and spread. ``store``: phase-output
    reuse through a ``ReuseSession`` (phase_store.py) the trial consults around its phases.
    ``progress_check(fraction, validate)``: the search stops hopeless trials with it.
    Every knob's ``release`` runs afterwards, whether the trial succeeded or not.

    Raises IncompatibleKnobs before anything runs if a value cannot work on ``runtime``;
    KnobError if a knob's verification shows it did not take effect; TrialUsageError when the code
    used the trial wrongly.
    """
    check_trial(pipeline, knob_values, runtime)  # single values, then combinations, then the pipeline's own limits
    if not getattr(pipeline, "any_knob", False):
        unknown = [k.name for k, _ in knob_values if k.name not in pipeline.knobs]
        if unknown:
            raise ConfigError(f"knobs.{unknown[0]}", f"not supported by pipeline {pipeline.name!r}")
    reset = reset_process_state()  # every trial starts from the same process state, whatever ran before
    seed_everything(seed)
    start_state = process_state()
    session = None
    if store is not None and getattr(pipeline, "reusable", True):
        session = ReuseSession(store, reuse_keys(pipeline, knob_values, runtime, meter, seed, workers_on_host), meter,
                               {"pipeline": pipeline.name, "trial": trial_number})
    metric = getattr(pipeline, "objective_metric", None)
    smoke = smoke or getattr(pipeline, "smoke_run", False)
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="greenknobs-trial-"))
    workdir.mkdir(parents=True, exist_ok=True)
    trial = Trial({k.name: v for k, v in knob_values}, [k for k, _ in knob_values], meter=meter, runtime=runtime,
                  seed=seed, number=trial_number, options=pipeline.user_options(), progress=progress,
                  progress_check=progress_check, reuse=session, repeats=repeats, spread_warning=spread_warning,
                  smoke=smoke, workdir=workdir, objective_metric=metric, serving=serving)
    try:
        if session is not None:
            session.begin(trial)
        with fingerprint.reading() as read:  # every data file the code opens: what its result depends on
            try:
                returned = pipeline.run(trial)
            except BaseException as exc:
                trial.abort(exc)
                raise
        verifications = trial.finish(returned)
        missing = [split for split in SPLITS if not trial.ctx.quality.get(split)]
        if SPLITS[0] in missing:
            raise TrialUsageError(f"pipeline {pipeline.name!r} scored no validation split")
    finally:
        if session is not None:
            session.end()
        trial.release()
        artifacts = _settle_artifacts(workdir, keep_artifacts)
        _release_all(knob_values, trial.ctx)
    ctx = trial.ctx
    return TrialResult(
        knob_values={k.name: v for k, v in knob_values},
        phases=trial.results,
        quality={split: dict(scores) for split, scores in ctx.quality.items()},
        samples=dict(ctx.samples),
        verifications=verifications,
        idle_power=idle_power,
        carbon_intensity=carbon_intensity,
        process_state={"reset": reset, "at_start": start_state},
        reuse=session.status if session is not None else {"status": "off"},
        held_out=trial.held_out_result,
        artifacts=artifacts,
        inputs=fingerprint.digests({*read, *pipeline.inputs()}),
        safeguards=trial.safeguards(),
        serving=trial.serving_result,
    ), ctx


def _settle_artifacts(workdir: Path, keep: bool) -> dict[str, Any]:
    """What frameworks wrote in the trial's folder (a Trainer's checkpoints): kept, or removed."""
    files = [f for f in workdir.rglob("*") if f.is_file()]
    out = {"dir": str(workdir), "files": len(files), "bytes": sum(f.stat().st_size for f in files), "kept": keep}
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def reuse_keys(pipeline: Pipeline, knob_values: list[tuple[Knob, Any]], runtime: Runtime, meter: EnergyMeter,
               seed: int, workers_on_host: int = 1) -> dict[str, str]:
    """Boundary phase -> the key of the state after it: a chain of output keys (each phase's
    knobs that affect output on top of the previous phase's key) extended by what changes the
    cost up to that point (phase_store.py), the greenknobs workers sharing this host included:
    a phase built beside two others costs more than alone, and its cost is what reuse attributes."""
    cls = type(pipeline)
    code = pipeline.code_files()
    output = digest({"pipeline": f"{cls.__module__}.{cls.__qualname__}", "code": fingerprint.code_digest(code),
                     "options": pipeline.options, "fingerprint": pipeline.fingerprint(), "seed": seed,
                     "libraries": fingerprint.library_versions(fingerprint.imports_of(code))})
    where = {"machine": {key: val for key, val in machine().items() if key in ("cpu", "cores", "gpus")},
             "device": runtime.device, "meter": meter.label, "meter_params": meter.params(),
             "workers_on_host": workers_on_host}
    cost_only: dict[str, Any] = {}
    keys = {}
    for phase in PHASES[:PHASES.index(BOUNDARIES[-1]) + 1]:
        mine = [(k, v) for k, v in knob_values if k.phase == phase]
        output = digest({"previous": output, "phase": phase, "knobs": {k.name: v for k, v in mine if k.affects_output}})
        cost_only.update({k.name: v for k, v in mine if not k.affects_output})
        if phase in BOUNDARIES:
            keys[phase] = digest({"output": output, "cost_only_knobs": cost_only, **where})
    return keys
