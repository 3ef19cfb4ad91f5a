"""How knobs watch a trial's computation: subscriptions to the trial's events (greenknobs.trial).

A knob subscribes once per trial (``once``); its callbacks record into its typed evidence. The
first forward of a phase is where one-off probes go (which blocks ran, fused-attention calls),
so later steps run without them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# the kind of forward pass each window's evidence is read from: training steps in training,
# predictions in inference, in the held-out window and in the steady-state serving measurement
SERVING = ("inference", "test", "serving")


def wanted(phase: str | None, training: bool, phases: tuple[str, ...]) -> bool:
    """A forward pass of the kind ``phases`` asks for: training-mode in training, eval-mode elsewhere."""
    return phase in phases and training == (phase == "training")


def once(trial: Any, knob: Any, key: str = "subscribed") -> bool:
    """True the first time a knob asks in this trial (then subscribe); False afterwards."""
    scratch = trial.scratch(knob)
    if scratch.get(key):
        return False
    scratch[key] = True
    return True


def on_first_forward(trial: Any, phases: tuple[str, ...], start: Callable[[str, Any, tuple, dict], Any],
                     finish: Callable[[str, Any, Any, Any], None]) -> None:
    """``start(phase, module, args, kwargs)`` as the first forward of the kind ``phases`` asks for
    begins in a window; ``finish(phase, state, module, output)`` when that forward returns."""
    states: dict[int, tuple[str, Any]] = {}

    def pre(phase, training, first, module, args, kwargs) -> None:
        if first and wanted(phase, training, phases):
            states[id(module)] = (phase, start(phase, module, args, kwargs))

    def post(phase, training, module, args, kwargs, output) -> None:
        got = states.pop(id(module), None)
        if got is not None:
            finish(got[0], got[1], module, output)

    trial.on("forward", pre)
    trial.on("forward_done", post)


def on_forward(trial: Any, phases: tuple[str, ...], fn: Callable[[str, Any, tuple, dict], None]) -> None:
    """``fn(phase, module, args, kwargs)`` before every forward of the kind ``phases`` asks for."""

    def pre(phase, training, first, module, args, kwargs) -> None:
        if wanted(phase, training, phases):
            fn(phase, module, args, kwargs)

    trial.on("forward", pre)
