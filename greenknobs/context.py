"""The one object a trial's phases pass along, and the evidence it collects.

Knobs and pipelines meet here. The fields knobs rely on are typed fields; anything else a
pipeline needs between its own phases goes in ``extras`` (``ctx.extras["label_names"]``), so a
knob can never come to depend on one pipeline's private attribute by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from greenknobs.errors import KnobError
from greenknobs.runtime import Runtime

Rows = list[dict[str, Any]]


@dataclass
class Observations:
    """What the pipeline saw while running (read by ``Knob.verify``)."""

    values: dict[str, Any] = field(default_factory=dict)

    def record(self, key: str, value: Any) -> None:
        self.values[key] = value

    def record_max(self, key: str, value: float) -> None:
        self.values[key] = max(self.values.get(key, value), value)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def require(self, key: str, knob: str) -> Any:
        if key not in self.values:
            raise KnobError(f"{knob} did not take effect: the pipeline never recorded {key!r}")
        return self.values[key]


@dataclass(slots=True)
class TrialContext:
    """Shared state of one trial.

    settings:  knob values the pipeline reads, keyed by knob name (``ctx.setting("system.threads")``)
    observed:  what actually happened (batch sizes seen, dtypes, step counts), for ``Knob.verify``
    quality:   metrics per split the inference phase scored: {"validation": {...}, "test": {...}}
               (validation steers the search; test is held out)
    samples:   how many examples each phase processed
    """

    runtime: Runtime
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)
    observed: Observations = field(default_factory=Observations)
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    phase_details: dict[str, dict[str, Any]] = field(default_factory=dict)
    # -- the data and model knobs act on (set by the pipeline) ---------------------------------
    train: Rows = field(default_factory=list)
    validation: Rows = field(default_factory=list)
    test: Rows = field(default_factory=list)
    training_texts: list[str] = field(default_factory=list)  # what training draws from (after dedup/subsampling)
    pad_id: int = 0
    model: Any = None  # the model being built, trained and served
    trained_model: Any = None  # the model as training left it (before inference-time transforms)
    teacher_loader: Callable[[], Any] | None = None  # the unpruned model, for distillation
    exit_head: Any = None  # early-exit classifier, when training.exit_head_depth > 0
    exit_block: int = 0  # blocks the exit head sits after
    meter: Any = None  # the trial's EnergyMeter: mechanisms that spend energy open their own windows on it
    # called by a training loop as it passes fractions of its planned steps, with a function that
    # scores validation quality: the search stops hopeless trials with it (raises HopelessTrial)
    progress_check: Callable[[float, Callable[[], float]], None] | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # pipeline-private state between its phases
    # knob name -> the typed evidence record the knob's own hooks filled (greenknobs.trial)
    evidence: dict[str, Any] = field(default_factory=dict)
    trial: Any = None  # the define-by-run Trial driving this context (not stored with phase outputs)
    # kinds of object handed over, and "asked:<knob>" for knobs the code read: stored with phase
    # outputs, so a trial resumed from them knows its knobs had their objects
    handed_kinds: set[str] = field(default_factory=set)
    # -- runner bookkeeping ----------------------------------------------------------------------
    phase: str | None = None
    apply_hook: Callable[[], None] | None = None
    applied_phases: set[str] = field(default_factory=set)

    def setting(self, name: str) -> Any:
        """A knob value; a KeyError here means the pipeline reads a knob it never declared."""
        try:
            value = self.settings[name]
        except KeyError:
            raise KeyError(f"setting {name!r}: the pipeline reads a knob it does not list in Pipeline.knobs") from None
        if self.trial is not None:
            self.trial.knob(name)  # counts as read: its mechanism lives in the pipeline
        return value

    def apply_knobs(self) -> None:
        """Called by a pipeline phase once what its knobs act on exists (e.g. the loaded model)."""
        if self.apply_hook is None:
            raise RuntimeError("apply_knobs() called outside a running phase")
        if self.phase in self.applied_phases:
            raise RuntimeError(f"apply_knobs() called twice in phase {self.phase}")
        self.applied_phases.add(self.phase or "")
        self.apply_hook()

    def detail(self, key: str, value: Any) -> None:
        """Attach a fact to the current phase's result (e.g. parameter count after pruning)."""
        phase = self.phase or (self.trial.current_phase if self.trial is not None else None)
        self.phase_details.setdefault(phase or "trial", {})[key] = value

    def snapshot(self) -> dict[str, Any]:
        """Field values (shallow; settings copied), so a repeated phase can start from the same state."""
        state = {name: getattr(self, name) for name in self.__dataclass_fields__}
        state["settings"] = dict(self.settings)
        state["extras"] = dict(self.extras)
        state["applied_phases"] = set(self.applied_phases)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self.settings = dict(state["settings"])
        self.extras = dict(state["extras"])
        self.applied_phases = set(state["applied_phases"])
