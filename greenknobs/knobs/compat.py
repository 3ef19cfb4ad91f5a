"""Knob combinations that cannot work together, and settings that do nothing in a combination.

The rules live on the knobs (``Knob.requires``, ``Knob.conflicts``); this module applies them.
``Knob.check`` judges one value against the machine. Some values only fail next to another
knob's value (bf16 inference with int8 quantisation): those are REFUSED here, before the trial
runs, and the trial is recorded as infeasible with the reason. Others are *inert*: a LoRA alpha
without LoRA, a pruning method with no layer removed. The search canonicalises those to the
baseline value before running (``canonicalise``), so it never spends energy on a trial that
differs from an earlier one only in settings nothing reads; run directly, those declared with
``refuse`` still refuse, as a silent no-op would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from greenknobs.errors import IncompatibleKnobs
from greenknobs.knobs.base import Conflict

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


INERT: list[Inert] = []  # rules for knobs that do not declare ``requires`` themselves (a pipeline's own family)


def inert_rules() -> list[Inert]:
    """Every "does nothing unless" rule: declared on the knobs (``Knob.requires``), then registered ones."""
    from greenknobs.knobs.base import REGISTRY

    declared = [Inert(name, cls.requires.knobs, cls.requires.active, cls.requires.why, cls.requires.refuse)
                for name, cls in REGISTRY.items() if cls.requires is not None]
    return declared + INERT


def _conflict_rule(name: str, c: Conflict) -> Rule:
    def rule(v: Values) -> str | None:
        if c.mine(v[name]) and c.theirs(v[c.other]):
            return f"{name}={v[name]!r} with {c.other}={v[c.other]!r}: {c.why}"
        return None
    return (name, c.other), rule


def rules() -> list[Rule]:
    """Every refusal rule: the knobs' declared conflicts, then registered ones (``register_rule``)."""
    from greenknobs.knobs.base import REGISTRY

    declared = [_conflict_rule(name, c) for name, cls in REGISTRY.items() for c in cls.conflicts]
    return declared + RULES


RULES: list[Rule] = []


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
        for r in inert_rules():
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
    for r in inert_rules():
        if r.refuse and r.dependent in values and all(n in values for n in r.needs) \
                and values[r.dependent] != defaults[r.dependent] and not r.active(values):
            raise IncompatibleKnobs(f"{r.dependent}={values[r.dependent]!r} needs {r.why}; otherwise it would do nothing")
    for names, rule in rules():
        if all(n in values for n in names):
            reason = rule(values)
            if reason:
                raise IncompatibleKnobs(reason)
    pipeline.check_knobs(values, runtime)  # a pipeline's own limits (e.g. distillation needs a trained teacher)
