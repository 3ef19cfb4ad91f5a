"""``greenknobs validate --smoke``: run the code a few steps before any energy is spent on a search.

One tiny trial at the baseline, then one per searched knob moved to the far end of its space: a
function or script pipeline runs with its handed-over loaders capped at a few batches per pass and
a Trainer at a few steps; a built-in pipeline on its warm-up subset. Every phase runs, every knob's
mechanism and hooks act, every knob's evidence is judged (epoch counts only recorded: the runs are
cut short). Nothing is stored: no study, no MLflow run, no phase outputs. Integration mistakes
(a TypeError in TrainingArguments, a knob the code gives no object to) surface here in seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from greenknobs.config import Experiment
from greenknobs.errors import GreenknobsError, IncompatibleKnobs
from greenknobs.knobs.base import KnobSetting
from greenknobs.knobs.compat import canonicalise
from greenknobs.meters import create_meter
from greenknobs.pipeline import execute_trial, pipeline_class
from greenknobs.runtime import detect_runtime


@dataclass
class SmokeRun:
    label: str
    values: dict[str, Any]
    outcome: str  # "ok", "infeasible: ...", "failed: ..."
    energy_j: float = 0.0
    provenance: str = ""
    seconds: float = 0.0
    phases: list[str] = field(default_factory=list)
    evidence: dict[str, str] = field(default_factory=dict)  # knob -> one line of what it showed
    safeguards: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok" or self.outcome.startswith("infeasible")


def far_value(setting: KnobSetting) -> Any:
    """The value of a searched knob farthest from its baseline (the mechanism at its strongest)."""
    space, default = setting.space, setting.default
    assert space is not None
    if space.choices is not None:
        others = [c for c in space.choices if c != default]
        if not others:
            return default
        return others[-1] if list(space.choices).index(default) < len(space.choices) / 2 else others[0]
    return space.high if default != space.high else space.low


def plan(exp: Experiment) -> list[tuple[str, dict[str, Any]]]:
    baseline = exp.baseline_values()
    runs = [("baseline", baseline)]
    for s in exp.searched_knobs:
        values, _ = canonicalise({**baseline, s.name: far_value(s)}, baseline)
        if values != baseline:
            runs.append((f"{s.name}={values[s.name]!r}", values))
    return runs


def smoke(exp: Experiment, progress=None) -> list[SmokeRun]:
    """Run the plan; ``progress(run)`` after each."""
    cls = pipeline_class(exp.pipeline)
    options = dict(exp.pipeline_options)
    if getattr(cls, "any_knob", False):
        options["smoke"] = True
    else:
        options = cls(options).warmup_options() or options
    pipeline = cls(options)
    runtime = detect_runtime(exp.device)
    out = []
    for label, values in plan(exp):
        knobs = [(s.knob, values[s.name]) for s in exp.knobs]
        meter = create_meter(exp.meter.name, exp.meter.params)
        started = time.perf_counter()
        run = SmokeRun(label, {k: v for k, v in values.items() if v != exp.baseline_values()[k]}, "ok")
        try:
            result, ctx = execute_trial(pipeline, knobs, meter, runtime, exp.seed, smoke=True)
            run.energy_j, run.provenance = result.energy_j, result.provenance
            run.phases = [*result.phases, *(["test"] if result.held_out else [])]
            run.evidence = {name: _line(ev) for name, ev in result.verifications.items() if name in run.values}
            run.safeguards = ctx.trial.safeguards() if ctx.trial is not None else {}
        except IncompatibleKnobs as exc:
            run.outcome = f"infeasible: {exc}"
        except GreenknobsError as exc:
            run.outcome = f"failed: {exc}"
        except Exception as exc:  # the code's own error: what a search would record as a failed trial
            run.outcome = f"failed: {type(exc).__name__}: {exc}"
        finally:
            meter.close()
        run.seconds = time.perf_counter() - started
        out.append(run)
        if progress is not None:
            progress(run)
    return out


def _line(evidence: dict[str, Any]) -> str:
    shown = [f"{k}={v}" for k, v in evidence.items() if k != "value" and not isinstance(v, (dict, list)) and v is not None]
    return ", ".join(shown[:4])
