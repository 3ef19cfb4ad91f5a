"""The one object a trial's phases pass along."""

from __future__ import annotations

from typing import Any, Callable

from greenknobs.knobs.base import Observations
from greenknobs.runtime import Runtime


class TrialContext:
    """Shared state of one trial.

    settings:  knob-controlled values the pipeline must read (``ctx.setting(name)``)
    observed:  what actually happened (batch sizes seen, dtypes, step counts) for ``Knob.verify``
    quality:   metrics the pipeline computed; samples: counts per phase
    Pipelines hang their own artefacts on it as attributes (``ctx.model``, ``ctx.train`` ...).
    """

    def __init__(self, runtime: Runtime, seed: int, workdir: str | None = None):
        self.runtime = runtime
        self.seed = seed
        self.workdir = workdir
        self.settings: dict[str, Any] = {}
        self.observed = Observations()
        self.quality: dict[str, float] = {}
        self.samples: dict[str, int] = {}
        self.phase_details: dict[str, dict[str, Any]] = {}
        self._apply_hook: Callable[[], None] | None = None
        self._applied_phases: set[str] = set()
        self.phase: str | None = None

    def setting(self, name: str) -> Any:
        """A knob-controlled setting; a KeyError here means the pipeline reads a knob it never declared."""
        return self.settings[name]

    def apply_knobs(self) -> None:
        """Called by a pipeline phase once what its knobs act on exists (e.g. the loaded model)."""
        if self._apply_hook is None:
            raise RuntimeError("apply_knobs() called outside a running phase")
        if self.phase in self._applied_phases:
            raise RuntimeError(f"apply_knobs() called twice in phase {self.phase}")
        self._applied_phases.add(self.phase)
        self._apply_hook()

    def detail(self, key: str, value: Any) -> None:
        """Attach a fact to the current phase's result (e.g. parameter count after pruning)."""
        self.phase_details.setdefault(self.phase or "trial", {})[key] = value
