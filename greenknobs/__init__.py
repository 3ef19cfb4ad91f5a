"""greenknobs: search the knobs of a five-phase ML pipeline for the energy-vs-quality Pareto front.

The public API, imported lazily (``import greenknobs`` loads neither torch nor Optuna):

    Trial, current_trial                       your own training code under the search (define-by-run)
    optimize                                   run a search on a function from Python (as Optuna's optimize)
    Knob, SettingKnob, Space, register         write and register a knob (greenknobs.knobs)
    Pipeline, run_trial                        a five-phase pipeline and the trial runner
    TrialContext, Observations                 what phases and knobs share in a trial
    EnergyMeter, Measurement, TrialResult      energy windows and what a trial produced
    Experiment, load_experiment                experiment files
    Search                                     the Optuna search over an experiment

Layers, top to bottom (each imports only from layers below it; tests/test_architecture.py):
    {cli, api} -> search -> {config, tracking, report} -> {pipeline, trial, phase_store} -> {knobs, meters}
        -> ml -> devices -> {context, phases, records, runtime, units, errors}
"""

from __future__ import annotations

import importlib
from typing import Any

from greenknobs.runtime import prefer_passive_thread_waits

prefer_passive_thread_waits()  # before anything imports torch: waiting OpenMP threads sleep, not spin

__version__ = "0.2.0"

_EXPORTS = {
    "Trial": "greenknobs.trial", "current_trial": "greenknobs.trial", "optimize": "greenknobs.api",
    "ObjectKnob": "greenknobs.knobs.base",
    "Knob": "greenknobs.knobs.base", "SettingKnob": "greenknobs.knobs.base", "Space": "greenknobs.knobs.base",
    "register": "greenknobs.knobs.base",
    "Pipeline": "greenknobs.pipeline", "run_trial": "greenknobs.pipeline",
    "TrialContext": "greenknobs.context", "Observations": "greenknobs.context",
    "EnergyMeter": "greenknobs.meters.base", "Measurement": "greenknobs.phases", "TrialResult": "greenknobs.phases",
    "Experiment": "greenknobs.config", "load_experiment": "greenknobs.config",
    "Search": "greenknobs.search.runner",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'greenknobs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
