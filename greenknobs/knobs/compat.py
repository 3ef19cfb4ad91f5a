"""Knob combinations that cannot work together, detected before a trial runs.

``Knob.check`` judges one value against the machine. Some values only fail next to another
knob's value (bf16 inference with int8 quantisation; a LoRA alpha without a LoRA). Those rules
live here, in one table, so a search records the combination as infeasible with the reason
instead of crashing or — worse — running a knob that silently does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from greenknobs.errors import IncompatibleKnobs

# (knobs involved, rule: values -> reason or None). ``values`` holds every knob of the trial.
Rule = tuple[tuple[str, ...], Callable[[dict[str, Any]], str | None]]


def _needs(dependent: str, baseline: Any, required: str, ok: Callable[[Any], bool], why: str) -> Rule:
    """``dependent`` away from its baseline only means something when ``required`` passes ``ok``."""
    def rule(v: dict[str, Any]) -> str | None:
        if v[dependent] != baseline and not ok(v[required]):
            return f"{dependent}={v[dependent]!r} needs {required} {why} (it is {v[required]!r}); otherwise it would do nothing"
        return None
    return (dependent, required), rule


def _both(a: str, a_bad: Callable[[Any], bool], b: str, b_bad: Callable[[Any], bool], why: str) -> Rule:
    def rule(v: dict[str, Any]) -> str | None:
        if a_bad(v[a]) and b_bad(v[b]):
            return f"{a}={v[a]!r} with {b}={v[b]!r}: {why}"
        return None
    return (a, b), rule


RULES: list[Rule] = [
    _needs("model.lora_alpha", 16, "model.lora_rank", lambda r: r > 0, "> 0"),
    _needs("model.lora_targets", "attention", "model.lora_rank", lambda r: r > 0, "> 0"),
    _needs("model.quantized_load", "none", "model.lora_rank", lambda r: r > 0,
           "> 0 (quantised weights cannot be trained; QLoRA trains adapters on top)"),
    _needs("training.kd_temperature", 2.0, "training.kd_lambda", lambda x: x > 0, "> 0"),
    _needs("inference.early_exit", "off", "training.exit_head_depth", lambda d: d > 0,
           "> 0 (the exit head is trained in the training phase)"),
    _both("inference.precision", lambda p: p != "fp32", "inference.quantization", lambda q: q != "none",
          "dynamic int8 kernels take fp32 activations"),
    _both("inference.compile", lambda c: c != "off", "inference.early_exit", lambda e: e != "off",
          "early exit runs a truncated layer stack, which a compiled graph cannot follow"),
    _both("model.weight_dtype", lambda d: d != "fp32", "training.precision", lambda p: p == "fp16",
          "fp16 loss scaling needs fp32 master weights"),
    _both("model.weight_dtype", lambda d: d != "fp32", "training.optimizer", lambda o: o == "adamw_8bit",
          "8-bit AdamW keeps fp32 master weights; use fp32 weights"),
]


def register_rule(names: tuple[str, ...], rule: Callable[[dict[str, Any]], str | None]) -> None:
    """Add a rule (e.g. for a user knob). It runs only when every knob in ``names`` is in the trial."""
    RULES.append((names, rule))


def check_trial(pipeline, knob_values: list[tuple[Any, Any]], runtime) -> None:
    """Raise IncompatibleKnobs if any single value or any combination cannot run here."""
    for knob, value in knob_values:
        knob.check(value, runtime)
    values = {k.name: v for k, v in knob_values}
    for names, rule in RULES:
        if all(n in values for n in names):
            reason = rule(values)
            if reason:
                raise IncompatibleKnobs(reason)
    pipeline.check_knobs(values, runtime)  # a pipeline's own limits (e.g. distillation needs a trained teacher)
