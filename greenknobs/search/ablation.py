"""The isolation study (``greenknobs ablate``): the baseline and each searched knob value alone,
every knob else at its baseline, repeated, in a study of its own beside the search's.

Design: N rounds; each round holds one baseline run and one run of every single-knob value (and
of any explicit combination asked for), in a seeded random order, so drift over the hours a study
takes hits the baseline and the changed runs alike (a randomised complete block design). The
first trial of the study is a baseline, the reference every other trial's relative figures use.
The plan is queued in the study's storage when the study is created: an interrupted run resumes
where it stopped by running what is still queued (and re-queues a trial that was cut off).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from typing import Any

from greenknobs.config import Experiment
from greenknobs.errors import ConfigError
from greenknobs.knobs.base import KnobSetting
from greenknobs.knobs.compat import canonicalise
from greenknobs.search import study as studies
from greenknobs.search.runner import Reporter, Search, SearchOutcome

SUFFIX = "-isolation"


def isolation_experiment(exp: Experiment) -> Experiment:
    """The experiment as its isolation study sees it: same baseline and measurement, its own study.
    The search's energy budget does not apply: the plan (values x repeats) is what the user asked
    for, and a plan cut short leaves effects without a noise floor (its cost is reported instead)."""
    return replace(exp, name=exp.name + SUFFIX, energy_budget_j=None)


def isolation_values(setting: KnobSetting) -> list[Any]:
    """The values of one searched knob that the isolation study runs alone.

    Choices: every non-default choice. Integer ranges: every value when there are at most five,
    else low, middle and high. Float ranges: low, middle (geometric for a log range) and high."""
    sp, default = setting.space, setting.default
    assert sp is not None
    values: list[Any]
    if sp.choices is not None:
        values = list(sp.choices)
    elif sp.integer:
        grid = list(range(int(sp.low or 0), int(sp.high or 0) + 1, int(sp.step or 1)))
        values = grid if len(grid) <= 5 else [grid[0], grid[len(grid) // 2], grid[-1]]
    else:
        lo, hi = float(sp.low or 0.0), float(sp.high or 0.0)
        mid = math.sqrt(lo * hi) if sp.log and lo > 0 else (lo + hi) / 2
        values = [lo, mid, hi]
    return [v for v in values if v != default]


def parse_combo(text: str, exp: Experiment) -> dict[str, Any]:
    """``"data.max_seq_len=64,model.layers_removed=3"`` -> searched-knob values (validated)."""
    searched = {s.name: s for s in exp.searched_knobs}
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = part.partition("=")
        if not sep or name not in searched:
            raise ConfigError("--combo", f"{part!r}: expected knob=value with a searched knob ({', '.join(searched)})")
        value = searched[name].knob.validate(_scalar(raw.strip()), f"--combo {name}")
        if not searched[name].space.contains(value):  # type: ignore[union-attr]
            raise ConfigError("--combo", f"{name}={value!r} lies outside its searched space")
        out[name] = value
    if len(out) < 2:
        raise ConfigError("--combo", f"{text!r}: a combination changes at least two knobs")
    return out


def _scalar(raw: str) -> Any:
    """A command-line value as a number, a boolean or a string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def plan(exp: Experiment, repeats: int, combos: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The queued runs (searched-knob params + role) and notes on values left out (inert alone)."""
    baseline = {s.name: s.default for s in exp.searched_knobs}
    everything = exp.baseline_values()
    items: list[dict[str, Any]] = []
    notes = []
    for s in exp.searched_knobs:
        for v in isolation_values(s):
            canonical, why = canonicalise({**everything, s.name: v}, everything)
            if canonical == everything:  # alone, this value does nothing: its effect is zero by construction
                notes.append(f"{s.name}={v!r} left out: {why[0] if why else 'equals the baseline'}")
                continue
            items.append({"params": {**baseline, s.name: v}, "role": {"kind": "single", "knob": s.name, "value": v}})
    for combo in combos:
        items.append({"params": {**baseline, **combo}, "role": {"kind": "combo", "knobs": combo}})
    runs = []
    for r in range(repeats):
        round_items = [{"params": dict(baseline), "role": {"kind": "baseline"}}, *items]
        rng = random.Random(exp.seed * 1000 + r)
        rng.shuffle(round_items)
        if r == 0:  # the study's reference baseline comes first
            first = next(i for i, it in enumerate(round_items) if it["role"]["kind"] == "baseline")
            round_items.insert(0, round_items.pop(first))
        runs += [{"params": it["params"], "role": {**it["role"], "repeat": r}} for it in round_items]
    return runs, notes


def run_isolation(exp: Experiment, tracker, reporter: Reporter | None = None, repeats: int = 3,
                  combos: list[dict[str, Any]] | None = None) -> tuple[SearchOutcome, list[str]]:
    """Queue the plan on first use (a rerun with more repeats or combinations adds the missing
    runs), then run whatever is queued."""
    iso = isolation_experiment(exp)
    study = studies.open_study(iso)
    runs, notes = plan(exp, repeats, combos or [])
    planned = study.user_attrs.get("isolation_plan", [])
    have = {_key(p) for p in planned}
    new = [r for r in runs if _key(r) not in have]
    for i, r in enumerate(new):
        attrs: dict[str, Any] = {"ablation": r["role"]}
        if not planned and i == 0:
            attrs["baseline"] = True
        studies.enqueue(study, r["params"], attrs)
    if new:
        study.set_user_attr("isolation_plan", planned + [{"params": r["params"], "role": r["role"]} for r in new])
    outcome = Search(iso, tracker, reporter, isolation=True).run()
    return outcome, notes


def _key(run: dict[str, Any]) -> str:
    role = run["role"]
    return repr((role.get("kind"), role.get("knob"), role.get("value"), sorted((role.get("knobs") or {}).items()),
                 role.get("repeat")))
