"""Warm starts (``warm_start: [quick, isolation, <study name>]``): earlier studies of the same
pipeline, on the same hardware and meter, inform this one.

Their completed trials join what TPE learns from (so the model-based search starts at once, not
after random start-up trials) and what the energy model is fitted on (so the budget promise, the
dominance check and the cost-aware proposals work from the first trial). Nothing of theirs is
written to this study, counted in its cost or put on its front.

A source ran on other data sizes or settings (the ``--quick`` subset), so its trials are
re-expressed on this study's scale: objective energy x (this baseline's / the source baseline's),
quality x the same ratio of baseline qualities -- energy effects compound multiplicatively
across knobs (the seed study), so a knob's relative effect carries over. Hardware must match:
joules measured on another CPU, GPU or meter say nothing about this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from greenknobs.config import Experiment
from greenknobs.errors import GreenknobsError
from greenknobs.search import study as studies
from greenknobs.search.study import FrozenTrial, Study


def source_name(exp: Experiment, name: str) -> str:
    """``quick`` and ``isolation`` name this experiment's own --quick and isolation studies."""
    base = exp.name.removesuffix("-quick")
    return {"quick": base + "-quick", "isolation": base + "-isolation"}.get(name, name)


@dataclass
class Source:
    name: str
    trials: list[FrozenTrial]
    baseline: FrozenTrial


@dataclass
class WarmStart:
    sources: list[Source]
    _cache: dict[Any, list[FrozenTrial]] = field(default_factory=dict)

    def scales(self, study: Study, source: Source) -> tuple[float, float, float] | None:
        """(objective energy, total energy, quality) ratios of this study's baseline to the source's;
        None until this study's baseline has completed."""
        own = studies.baseline_trial(study)
        if own is None or not own.values:
            return None
        energy = own.values[0] / source.baseline.values[0]
        own_total, source_total = _total(own), _total(source.baseline)
        total = own_total / source_total if own_total and source_total else energy
        return energy, total, own.values[1] / source.baseline.values[1]

    def trials(self, study: Study) -> list[FrozenTrial]:
        """The sources' trials on this study's scale (what the sampler learns from); [] before its baseline."""
        own = studies.baseline_trial(study)
        if own is None or not own.values:
            return []
        key = own.number
        if key not in self._cache:
            out = []
            for src in self.sources:
                scale = self.scales(study, src)
                assert scale is not None
                same = [t for t in src.trials if all(t.distributions.get(k) == d for k, d in own.distributions.items())]
                out += [studies.rescaled(t, scale[0], scale[2], src.name) for t in same]
            self._cache[key] = out
        return self._cache[key]

    def observations(self, study: Study, objective: bool = True) -> list[tuple[dict[str, Any], float]]:
        """(knob values, energy) of the sources' trials on this study's scale, for the energy model."""
        out = []
        for src in self.sources:
            scale = self.scales(study, src)
            if scale is None:
                continue
            for t in src.trials:
                energy = t.values[0] if objective else _total(t)
                if energy:
                    out.append((t.user_attrs["knob_values"], energy * (scale[0] if objective else scale[1])))
        return out

    def describe(self, study: Study) -> dict[str, Any]:
        """What the warm start contributes, as the study and the report state it."""
        rows = []
        for src in self.sources:
            scale = self.scales(study, src)
            rows.append({"study": src.name, "trials": len(src.trials), "baseline_j": src.baseline.values[0],
                         "energy_scale": None if scale is None else round(scale[0], 4),
                         "quality_scale": None if scale is None else round(scale[2], 4)})
        return {"sources": rows, "informs": "the sampler (TPE's densities and start-up) and the energy model; "
                                            "never the front, the cost or the trial count"}


def _total(t: FrozenTrial) -> float | None:
    energy = (t.user_attrs.get("result") or {}).get("energy_j")
    return float(energy) if energy else None


def load(exp: Experiment, hardware: dict[str, Any]) -> WarmStart | None:
    """The experiment's warm-start sources, checked: each exists, ran this pipeline with the same
    objectives on the same hardware and meter, and has a completed baseline. A GreenknobsError
    (one line) says which and why otherwise."""
    if not exp.warm_start:
        return None
    sources = []
    for name in exp.warm_start:
        real = source_name(exp, name)
        if real == exp.name:
            raise GreenknobsError(f"warm_start: {name!r} is this study itself")
        attrs, trials = studies.source_study(exp, real)
        recorded = attrs.get("fingerprint") or {}
        if recorded.get("pipeline") != exp.pipeline or recorded.get("objectives") != [
                exp.objectives.energy_scope, exp.objectives.quality_metric, exp.objectives.quality_direction]:
            raise GreenknobsError(f"warm_start: study {real!r} ran pipeline {recorded.get('pipeline')!r} with objectives "
                                  f"{recorded.get('objectives')}; this search runs {exp.pipeline!r} with "
                                  f"{[exp.objectives.energy_scope, exp.objectives.quality_metric]}: its trials do not carry over")
        if attrs.get("hardware") != hardware:
            raise GreenknobsError(f"warm_start: study {real!r} ran on {_machine(attrs.get('hardware'))}, this search runs on "
                                  f"{_machine(hardware)}: its joules say nothing about this machine")
        baseline = next((t for t in trials if t.user_attrs.get("baseline")), None)
        if baseline is None:
            raise GreenknobsError(f"warm_start: study {real!r} has no completed baseline to scale its trials by")
        sources.append(Source(real, trials, baseline))
    return WarmStart(sources)


def _machine(hw: dict[str, Any] | None) -> str:
    if not hw:
        return "hardware it did not record (a study made before greenknobs recorded it)"
    return f"{hw.get('cpu')} x{hw.get('cores')}" + (f", {', '.join(hw['gpus'])}" if hw.get("gpus") else "") + \
        f", meter {hw.get('meter')}"
