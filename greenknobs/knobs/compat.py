"""Knob combinations that cannot work together, and settings that do nothing in a combination.

``Knob.check`` judges one value against the machine. Some values only fail next to another
knob's value (bf16 inference with int8 quantisation): those are REFUSED here, before the trial
runs, and the trial is recorded as infeasible with the reason. Others are *inert*: a LoRA alpha
without LoRA, a pruning method with no layer removed. The search canonicalises those to the
baseline value before running (``canonicalise``), so it never spends energy on a trial that
differs from an earlier one only in settings nothing reads; run directly, the first four still
refuse, as a silent no-op would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from greenknobs.errors import IncompatibleKnobs

Values = dict[str, Any]
# (knobs involved, rule: values -> reason or None). ``values`` holds every knob of the trial.
Rule = tuple[tuple[str, ...], Callable[[Values], str | None]]


@dataclass(frozen=True)
class Inert:
    """``dependent`` away from its baseline does nothing unless ``active(values)``."""

    dependent: str
    needs: tuple[str, ...]  # the other knobs ``active`` reads
    active: Callable[[Values], bool]
    why: str  # what would have to hold, in words
    refuse: bool = False  # also refused when a trial is run directly (not only canonicalised)


_CALIBRATING = {"block_influence", "angular", "iterative_loss", "iterative_metric", "learned_mask", "merge"}

INERT: list[Inert] = [
    Inert("model.lora_alpha", ("model.lora_rank",), lambda v: v["model.lora_rank"] > 0, "model.lora_rank > 0", True),
    Inert("model.lora_targets", ("model.lora_rank",), lambda v: v["model.lora_rank"] > 0, "model.lora_rank > 0", True),
    Inert("training.kd_temperature", ("training.kd_lambda",), lambda v: v["training.kd_lambda"] > 0,
          "training.kd_lambda > 0", True),
    Inert("inference.early_exit", ("training.exit_head_depth",), lambda v: v["training.exit_head_depth"] > 0,
          "training.exit_head_depth > 0 (the exit head is trained in the training phase)", True),
    *(Inert(name, ("model.layers_removed",), lambda v: v["model.layers_removed"] > 0, "model.layers_removed > 0")
      for name in ("model.pruning_method", "model.pruning_compensation", "model.healing_steps")),
    Inert("model.pruning_iterative", ("model.layers_removed",), lambda v: v["model.layers_removed"] > 1,
          "model.layers_removed > 1 (one block is removed in one round either way)"),
    Inert("model.calibration_samples", ("model.layers_removed", "model.pruning_method"),
          lambda v: v["model.layers_removed"] > 0 and (v["model.pruning_method"] in _CALIBRATING
                                                       or v.get("model.pruning_compensation") or v.get("model.healing_steps", 0) > 0),
          "layers removed by a method that scores calibration data (or compensation, or healing)"),
    *(Inert(name, ("model.healing_steps",), lambda v: v["model.healing_steps"] > 0, "model.healing_steps > 0")
      for name in ("model.healing_lambda", "model.healing_temperature", "model.healing_entropy_weight")),
]


def _both(a: str, a_bad: Callable[[Any], bool], b: str, b_bad: Callable[[Any], bool], why: str) -> Rule:
    def rule(v: Values) -> str | None:
        if a_bad(v[a]) and b_bad(v[b]):
            return f"{a}={v[a]!r} with {b}={v[b]!r}: {why}"
        return None
    return (a, b), rule


def _needs(dependent: str, baseline: Any, required: str, ok: Callable[[Any], bool], why: str) -> Rule:
    def rule(v: Values) -> str | None:
        if v[dependent] != baseline and not ok(v[required]):
            return f"{dependent}={v[dependent]!r} needs {required} {why} (it is {v[required]!r})"
        return None
    return (dependent, required), rule


RULES: list[Rule] = [
    _needs("model.quantized_load", "none", "model.lora_rank", lambda r: r > 0,
           "> 0 (quantised weights cannot be trained; QLoRA trains adapters on top)"),
    _both("inference.precision", lambda p: p != "fp32", "inference.quantization", lambda q: q != "none",
          "dynamic int8 kernels take fp32 activations"),
    _both("inference.compile", lambda c: c != "off", "inference.early_exit", lambda e: e != "off",
          "early exit runs a truncated layer stack, which a compiled graph cannot follow"),
    _both("model.weight_dtype", lambda d: d != "fp32", "training.precision", lambda p: p == "fp16",
          "fp16 loss scaling needs fp32 master weights"),
    _both("model.weight_dtype", lambda d: d != "fp32", "training.optimizer", lambda o: o == "adamw_8bit",
          "8-bit AdamW keeps fp32 master weights; use fp32 weights"),
]


def register_rule(names: tuple[str, ...], rule: Callable[[Values], str | None]) -> None:
    """Add a refusal rule (e.g. for a user knob). It runs only when every knob in ``names`` is in the trial."""
    RULES.append((names, rule))


def canonicalise(values: Values, baseline: Values) -> tuple[Values, list[str]]:
    """``values`` with every inert setting put back to its baseline, and a note per change.

    Applied until nothing changes (healing's lambda is inert once healing itself is)."""
    out, notes = dict(values), []
    changed = True
    while changed:
        changed = False
        for r in INERT:
            if r.dependent not in out or r.dependent not in baseline or not all(n in out for n in r.needs):
                continue
            if out[r.dependent] != baseline[r.dependent] and not r.active(out):
                notes.append(f"{r.dependent}={out[r.dependent]!r} -> {baseline[r.dependent]!r} (does nothing unless {r.why})")
                out[r.dependent] = baseline[r.dependent]
                changed = True
    return out, notes


def check_trial(pipeline, knob_values: list[tuple[Any, Any]], runtime) -> None:
    """Raise IncompatibleKnobs if any single value or any combination cannot run here."""
    for knob, value in knob_values:
        knob.check(value, runtime)
    values = {k.name: v for k, v in knob_values}
    defaults = {k.name: k.default for k, _ in knob_values}
    for r in INERT:
        if r.refuse and r.dependent in values and all(n in values for n in r.needs) \
                and values[r.dependent] != defaults[r.dependent] and not r.active(values):
            raise IncompatibleKnobs(f"{r.dependent}={values[r.dependent]!r} needs {r.why}; otherwise it would do nothing")
    for names, rule in RULES:
        if all(n in values for n in names):
            reason = rule(values)
            if reason:
                raise IncompatibleKnobs(reason)
    pipeline.check_knobs(values, runtime)  # a pipeline's own limits (e.g. distillation needs a trained teacher)
