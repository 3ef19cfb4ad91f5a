"""What the trials mean: single-knob effects with bootstrap intervals and a noise floor, the
cascade (do savings and quality compound as the single-knob effects predict?), hypervolume
progress, the knee of the front, recommendations, and what the search cost against what it saves.

Pure functions over ``TrialRow``s: no study, no MLflow, no torch. Quality is compared in the
direction the experiment optimises (``maximize`` for F1, ``minimize`` for perplexity); "retained"
is Q/Q0 when maximising and Q0/Q when minimising, as in the search's own figures.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from greenknobs.phases import PHASES
from greenknobs.records import TrialRow

BOOTSTRAP = 2000


# -- noise and single-knob effects ---------------------------------------------------------------
@dataclass
class NoiseFloor:
    """How much the untouched baseline moves between repeats: the smallest effect worth a name."""

    runs: int
    energy_j_mean: float
    energy_rel: float | None  # half the range of the baseline's total energy, relative to its mean
    quality_mean: float
    quality_abs: float  # half the range of its validation quality, but never below one example's worth
    test_quality_mean: float | None

    def describe(self) -> str:
        if self.energy_rel is None:
            return "one baseline run: no noise floor (run `greenknobs ablate` with --repeats >= 2)"
        return (f"baseline x{self.runs}: energy ±{100 * self.energy_rel:.1f} %, "
                f"validation quality ±{self.quality_abs:.4f}")


@dataclass
class Effect:
    """One knob value run alone (every other knob at its baseline), against the baseline."""

    knob: str
    value: Any
    runs: int
    energy_j: float
    energy_j_runs: list[float]
    saving_pct: float  # 100 * (1 - E / E0), means over repeats
    saving_ci_pct: tuple[float, float] | None  # bootstrap 95 % interval
    phase_delta_j: dict[str, float]
    quality: float  # validation, mean
    quality_delta: float
    quality_ci: tuple[float, float] | None
    test_quality: float | None
    retained: float  # validation quality retained (fraction)
    energy_distinguishable: bool
    quality_distinguishable: bool
    judged: bool = True  # repeats on both sides: without them there is no noise floor to judge against

    @property
    def energy_verdict(self) -> str:
        if not self.judged:
            return "not judged (one run: repeat with --repeats >= 2)"
        return "distinguishable" if self.energy_distinguishable else "not distinguishable"

    @property
    def quality_verdict(self) -> str:
        if not self.judged:
            return "not judged"
        return "changed" if self.quality_distinguishable else "unchanged within the floor"

    @property
    def label(self) -> str:
        value = f"{self.value:.4g}" if isinstance(self.value, float) else self.value
        return f"{self.knob}={value}"


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _retained(q: float, q0: float, maximize: bool) -> float:
    if maximize:
        return q / q0 if q0 else 0.0
    return q0 / q if q else 0.0


def bootstrap_ci(changed: list[float], base: list[float], stat, seed: int = 0,
                 draws: int = BOOTSTRAP) -> tuple[float, float] | None:
    """95 % percentile interval of ``stat(mean(changed), mean(base))``, resampling both groups
    independently; None when either group has a single run (nothing to resample)."""
    if len(changed) < 2 or len(base) < 2:
        return None
    rng = random.Random(seed)
    values = sorted(stat(_mean(rng.choices(changed, k=len(changed))), _mean(rng.choices(base, k=len(base))))
                    for _ in range(draws))
    return values[int(0.025 * draws)], values[int(0.975 * draws) - 1]


def baseline_rows(rows: list[TrialRow]) -> list[TrialRow]:
    return [r for r in rows if r.complete and (r.ablation or {}).get("kind") == "baseline"]


def noise_floor(base: list[TrialRow], validation_size: int | None = None) -> NoiseFloor | None:
    if not base:
        return None
    e = [r.energy_j or 0.0 for r in base]
    q = [r.validation_quality or 0.0 for r in base]
    t = [r.test_quality for r in base if r.test_quality is not None]
    resolution = 1.0 / validation_size if validation_size else 0.0
    rel = (max(e) - min(e)) / 2 / _mean(e) if len(e) > 1 and _mean(e) > 0 else None
    return NoiseFloor(len(base), _mean(e), rel, _mean(q), max((max(q) - min(q)) / 2, resolution),
                      _mean(t) if t else None)


def knob_effects(rows: list[TrialRow], maximize: bool, validation_size: int | None = None,
                 seed: int = 0) -> tuple[list[Effect], NoiseFloor | None]:
    """Single-knob effects from an isolation study's rows (``ablation`` roles)."""
    base = baseline_rows(rows)
    floor = noise_floor(base, validation_size)
    if floor is None:
        return [], None
    e0 = [r.energy_j or 0.0 for r in base]
    q0 = [r.validation_quality or 0.0 for r in base]
    groups: dict[tuple[str, str], list[TrialRow]] = defaultdict(list)
    for r in rows:
        role = r.ablation or {}
        if r.complete and role.get("kind") == "single":
            groups[(role["knob"], repr(role["value"]))].append(r)
    effects = []
    for (knob, _), group in sorted(groups.items()):
        e = [r.energy_j or 0.0 for r in group]
        q = [r.validation_quality or 0.0 for r in group]
        t = [r.test_quality for r in group if r.test_quality is not None]
        saving = 100 * (1 - _mean(e) / floor.energy_j_mean)
        ci = bootstrap_ci(e, e0, lambda c, b: 100 * (1 - c / b), seed)
        qci = bootstrap_ci(q, q0, lambda c, b: c - b, seed + 1)
        phases = {p: _mean([r.phase_energy_j.get(p) or 0.0 for r in group])
                  - _mean([r.phase_energy_j.get(p) or 0.0 for r in base]) for p in PHASES}
        floor_pct = 100 * floor.energy_rel if floor.energy_rel is not None else None
        e_dist = floor_pct is not None and ci is not None and (ci[0] > 0 or ci[1] < 0) and abs(saving) > floor_pct
        dq = _mean(q) - floor.quality_mean
        q_dist = floor.runs > 1 and abs(dq) > floor.quality_abs and (qci is None or qci[0] > 0 or qci[1] < 0)
        effects.append(Effect(knob, group[0].ablation["value"], len(group), _mean(e), e, saving, ci, phases,  # type: ignore[index]
                              _mean(q), dq, qci, _mean(t) if t else None, _retained(_mean(q), floor.quality_mean, maximize),
                              bool(e_dist), bool(q_dist), floor.runs > 1 and len(group) > 1))
    return effects, floor


# -- the cascade ------------------------------------------------------------------------------------
@dataclass
class CascadeRow:
    """A combination of knobs against what its single-knob effects predict."""

    source: str  # "search trial 12" or "isolation combo"
    knobs: dict[str, Any]  # what differs from the baseline
    predicted_saving_pct: float | None  # 1 - prod(1 - s_i)
    observed_saving_pct: float
    predicted_retained: float | None  # prod(r_i), validation
    observed_retained: float
    observed_test_retained: float | None
    energy_verdict: str
    quality_verdict: str
    missing: list[str] = field(default_factory=list)  # changed knob values with no isolation effect

    @property
    def energy_gap_pts(self) -> float | None:
        return None if self.predicted_saving_pct is None else self.observed_saving_pct - self.predicted_saving_pct

    @property
    def quality_gap(self) -> float | None:
        return None if self.predicted_retained is None else self.observed_retained - self.predicted_retained


def changed_knobs(row: TrialRow, baseline: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.knobs.items() if k in baseline and v != baseline[k]}


def _verdict(gap: float | None, floor: float, better: str, worse: str) -> str:
    if gap is None:
        return "no prediction"
    if gap > floor:
        return better
    if gap < -floor:
        return worse
    return "as predicted"


def cascade(search_rows: list[TrialRow], iso_rows: list[TrialRow], effects: list[Effect], floor: NoiseFloor | None,
            baseline_values: dict[str, Any], maximize: bool) -> list[CascadeRow]:
    """Every completed combination (two or more knobs away from the baseline) in the search and in
    the isolation study, against 1 - prod(1 - s_i) for energy and prod(r_i) for quality."""
    lookup = _effect_lookup(effects, baseline_values)
    search_base = next((r for r in search_rows if r.baseline and r.complete), None)
    e_floor = 100 * max(2 * (floor.energy_rel or 0.0), 0.01) if floor else 1.0
    q_floor = (2 * floor.quality_abs / floor.quality_mean) if floor and floor.quality_mean else 0.02
    out: list[CascadeRow] = []

    def row_for(source: str, knobs: dict[str, Any], energy: float, e0: float, q: float, q0: float,
                tq: float | None, tq0: float | None) -> CascadeRow:
        known = [lookup(k, v) for k, v in knobs.items()]
        missing = [f"{k}={v}" for (k, v), e in zip(knobs.items(), known) if e is None]
        pred_s = pred_r = None
        if not missing:
            keep, pred_r = 1.0, 1.0
            for saving, retained in (k for k in known if k is not None):
                keep *= 1 - saving / 100
                pred_r *= retained
            pred_s = 100 * (1 - keep)
        obs_s = 100 * (1 - energy / e0)
        obs_r = _retained(q, q0, maximize)
        row = CascadeRow(source, knobs, pred_s, obs_s, pred_r, obs_r,
                         _retained(tq, tq0, maximize) if tq is not None and tq0 else None, "", "", missing)
        row.energy_verdict = _verdict(row.energy_gap_pts, e_floor, "saves more than predicted",
                                      "saves less than predicted (interference)")
        row.quality_verdict = _verdict(row.quality_gap, q_floor, "keeps more quality than predicted",
                                       "loses more quality than predicted (collapse)" if row.quality_gap is not None
                                       and row.quality_gap < -0.25 else "loses more quality than predicted")
        return row

    if search_base is not None:
        for r in search_rows:
            knobs = changed_knobs(r, baseline_values)
            if r.complete and len(knobs) >= 2 and r.duplicate_of is None:
                out.append(row_for(f"search trial {r.trial}", knobs, r.energy_j or 0.0, search_base.energy_j or 1.0,
                                   r.validation_quality or 0.0, search_base.validation_quality or 0.0,
                                   r.test_quality, search_base.test_quality))
    if floor is not None:
        combos: dict[str, list[TrialRow]] = defaultdict(list)
        for r in iso_rows:
            if r.complete and (r.ablation or {}).get("kind") == "combo":
                combos[repr(sorted(r.ablation["knobs"].items()))].append(r)  # type: ignore[index]
        for group in combos.values():
            knobs = dict(group[0].ablation["knobs"])  # type: ignore[index]
            out.append(row_for(f"isolation combination (x{len(group)})", knobs, _mean([g.energy_j or 0.0 for g in group]),
                               floor.energy_j_mean, _mean([g.validation_quality or 0.0 for g in group]), floor.quality_mean,
                               _mean([g.test_quality or 0.0 for g in group]), floor.test_quality_mean))
    return out


def _effect_lookup(effects: list[Effect], baseline_values: dict[str, Any]):
    """(saving %, quality retained) of a knob value alone: measured, or for a numeric knob whose
    value was not run alone, interpolated between the nearest values that were (the baseline's
    own value counting as 0 % and 100 %; on a log scale when the values span a decade or more)."""
    exact = {(e.knob, repr(e.value)): (e.saving_pct, e.retained) for e in effects}
    numeric: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for e in effects:
        if isinstance(e.value, (int, float)) and not isinstance(e.value, bool):
            numeric[e.knob].append((float(e.value), e.saving_pct, e.retained))
    for knob, pts in numeric.items():
        base = baseline_values.get(knob)
        if isinstance(base, (int, float)) and not isinstance(base, bool):
            pts.append((float(base), 0.0, 1.0))
        pts.sort()

    def lookup(knob: str, value: Any) -> tuple[float, float] | None:
        if (knob, repr(value)) in exact:
            return exact[(knob, repr(value))]
        pts = numeric.get(knob)
        if not pts or not isinstance(value, (int, float)) or isinstance(value, bool) or len(pts) < 2:
            return None
        xs = [p[0] for p in pts]
        log = xs[0] > 0 and xs[-1] / xs[0] >= 10
        f = math.log if log else (lambda x: x)
        v = min(max(float(value), xs[0]), xs[-1])  # outside the measured range: the nearest end
        for (x0, s0, r0), (x1, s1, r1) in zip(pts, pts[1:]):
            if x0 <= v <= x1:
                w = 0.0 if x1 == x0 else (f(v) - f(x0)) / (f(x1) - f(x0))
                return s0 + w * (s1 - s0), r0 + w * (r1 - r0)
        return None

    return lookup


@dataclass
class PairEffect:
    pair: tuple[str, str]
    combinations: int
    energy_gap_pts: float  # mean observed - predicted saving over the combinations holding the pair
    quality_gap: float
    verdict: str


def interfering_pairs(rows: list[CascadeRow], floor: NoiseFloor | None) -> list[PairEffect]:
    """Knob-value pairs whose combinations miss the prediction, in either direction."""
    e_floor = 100 * max(2 * (floor.energy_rel or 0.0), 0.01) if floor else 1.0
    q_floor = (2 * floor.quality_abs / floor.quality_mean) if floor and floor.quality_mean else 0.02
    gaps: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if r.energy_gap_pts is None or r.quality_gap is None:
            continue
        labels = sorted(f"{k}={v}" for k, v in r.knobs.items())
        for pair in itertools.combinations(labels, 2):
            gaps[pair].append((r.energy_gap_pts, r.quality_gap))
    out = []
    for pair, gs in gaps.items():
        eg, qg = _mean([g[0] for g in gs]), _mean([g[1] for g in gs])
        parts = []
        if eg < -e_floor:
            parts.append("savings interfere")
        elif eg > e_floor:
            parts.append("savings compound beyond prediction")
        if qg < -q_floor:
            parts.append("quality collapses together")
        elif qg > q_floor:
            parts.append("quality holds better together")
        if parts:
            out.append(PairEffect(pair, len(gs), eg, qg, "; ".join(parts)))
    return sorted(out, key=lambda p: (p.quality_gap, p.energy_gap_pts))


# -- progress --------------------------------------------------------------------------------------
@dataclass
class Progress:
    reference: dict[str, float]  # the hypervolume reference point, in the units it is stated
    trials: list[int]
    hypervolume: list[float]
    cumulative_spent_j: list[float]


def hypervolume_2d(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (x minimised, y maximised) and bounded by ``ref`` = (x_max, y_min):
    a staircase from the cheapest point, each step as high as the best y found so far."""
    pts = sorted((x, y) for x, y in points if x < ref[0] and y > ref[1])
    front: list[tuple[float, float]] = []
    for x, y in pts:
        if not front or y > front[-1][1]:
            front.append((x, y))
    area = 0.0
    for i, (x, y) in enumerate(front):
        x_next = front[i + 1][0] if i + 1 < len(front) else ref[0]
        area += (x_next - x) * (y - ref[1])
    return area


def progress(rows: list[TrialRow], maximize: bool, quality_floor: float) -> Progress | None:
    """Hypervolume of the feasible front after each trial, against trials and against the joules
    the search had spent by then. Energy is normalised by the baseline's (x in [0, 1.2]); quality
    is measured above the floor the constraints set (``quality_floor``)."""
    base = next((r for r in rows if r.baseline and r.complete), None)
    if base is None or not base.energy_j:
        return None
    ordered = sorted(rows, key=lambda r: r.trial)
    ref = (1.2, quality_floor if maximize else -quality_floor)
    pts: list[tuple[float, float]] = []
    trials, hv, spent = [], [], []
    total = 0.0
    for r in ordered:
        total += r.spent_j
        if r.complete and r.feasible:
            q = r.validation_quality or 0.0
            pts.append(((r.energy_j or 0.0) / base.energy_j, q if maximize else -q))
        trials.append(r.trial)
        hv.append(hypervolume_2d(pts, ref))
        spent.append(total)
    return Progress({"energy_fraction_of_baseline": ref[0], "quality": quality_floor}, trials, hv, spent)


# -- recommendations and payback ---------------------------------------------------------------------
def knee(front: list[TrialRow], maximize: bool) -> TrialRow | None:
    """The front point farthest from the line joining its two ends (energy and quality normalised)."""
    pts = [r for r in front if r.complete]
    if len(pts) <= 2:
        return max(pts, key=lambda r: (r.validation_quality or 0) * (1 if maximize else -1), default=None) if pts else None
    es = [r.energy_j or 0.0 for r in pts]
    qs = [(r.validation_quality or 0.0) * (1 if maximize else -1) for r in pts]
    e_lo, e_hi, q_lo, q_hi = min(es), max(es), min(qs), max(qs)
    norm = [((e - e_lo) / ((e_hi - e_lo) or 1), (q - q_lo) / ((q_hi - q_lo) or 1)) for e, q in zip(es, qs)]
    a, b = min(norm), max(norm)  # cheapest end and most expensive end
    dx, dy = b[0] - a[0], b[1] - a[1]
    length = (dx * dx + dy * dy) ** 0.5 or 1.0
    dist = [abs(dy * (x - a[0]) - dx * (y - a[1])) / length for x, y in norm]
    return pts[max(range(len(pts)), key=lambda i: dist[i])]


@dataclass
class Recommendation:
    kind: str  # "lowest energy meeting the quality floor" | "knee of the front"
    trial: int
    knobs: dict[str, Any]
    energy_j: float
    saving_pct: float  # percent of the baseline's energy
    # the saving's noise, in percentage points of the baseline's energy (the unit of saving_pct):
    # 100 * sqrt(2) * r * E / E0, the baseline's relative half-range r applied to both figures; None without repeats
    saving_spread_pct: float | None
    validation_quality: float
    test_quality: float | None
    test_retained_pct: float | None
    snippet: str  # the experiment-file lines that reproduce it
    training_j: float  # data + model + system + training phases
    inference_j_per_1k: float | None
    noise_rel: float | None = None  # the noise floor behind saving_spread_pct: the baseline's relative half-range


def training_energy(row: TrialRow) -> float:
    return sum((row.phase_energy_j.get(p) or 0.0) for p in PHASES if p != "inference")


def inference_per_1k(row: TrialRow, predictions: int | None) -> float | None:
    """J per 1,000 predictions: the steady-state serving figure when the trial measured it, else the
    inference phase's energy over the predictions it scored (first calls and exports included)."""
    if row.serving and row.serving.get("j_per_1k") is not None:
        return float(row.serving["j_per_1k"])
    j = row.phase_energy_j.get("inference")
    return None if j is None or not predictions else j * 1000.0 / predictions


def snippet(row: TrialRow, searched: list[str], fixed: dict[str, Any] | None = None) -> str:
    """``knobs:`` lines fixing every searched knob at the recommended value, and the knobs the
    experiment fixed away from their defaults (YAML, as in an experiment)."""
    lines = ["knobs:"]
    values = {**(fixed or {}), **{name: row.knobs.get(name) for name in searched}}
    for name, value in values.items():
        text = "true" if value is True else "false" if value is False else (f"{value:.4g}" if isinstance(value, float) else str(value))
        lines.append(f"  {name}: {text}")
    return "\n".join(lines)


def recommendations(front: list[TrialRow], baseline: TrialRow | None, floor: NoiseFloor | None, searched: list[str],
                    maximize: bool, predictions: int | None, fixed: dict[str, Any] | None = None) -> list[Recommendation]:
    if not front or baseline is None:
        return []
    lowest = min(front, key=lambda r: r.energy_j or 0.0)
    k = knee(front, maximize)
    if k is None or k.trial == lowest.trial:
        picks = [("lowest energy meeting the quality floor" + (" (also the knee)" if k else ""), lowest)]
    else:
        picks = [("lowest energy meeting the quality floor", lowest), ("knee of the front", k)]
    rel = floor.energy_rel if floor and floor.energy_rel is not None else None
    out = []
    for kind, r in picks:
        e, e0 = r.energy_j or 0.0, baseline.energy_j or 0.0
        # s = 1 - E/E0 with E and E0 each moving by rel of themselves: s moves by sqrt(2) * rel * E/E0
        spread = 100 * math.sqrt(2) * rel * e / e0 if rel is not None and e0 > 0 else None
        out.append(Recommendation(kind, r.trial, {n: r.knobs.get(n) for n in searched}, e,
                                  r.energy_saving_pct or 0.0, spread, r.validation_quality or 0.0, r.test_quality,
                                  r.test_quality_retained_pct, snippet(r, searched, fixed), training_energy(r),
                                  inference_per_1k(r, predictions), rel))
    return out


def saving_noise_j(e0: float, e: float, rel: float) -> float:
    """How far a saving of e0 - e joules moves by noise alone when each figure moves by ``rel`` of
    itself (independently): rel * sqrt(e0^2 + e^2). A saving no larger than this is no saving."""
    return rel * math.hypot(e0, e)


# The deployment a payback is stated for, when the experiment states none (``report:`` in the file).
DEFAULT_DEPLOYMENT = {"retrains_per_month": 4.0, "predictions_per_month": 1_000_000.0}
# The noise floor assumed where no repeated baseline measured one: modelled figures of one
# configuration moved ~10 % between runs on the project's VMs (README).
ASSUMED_NOISE_REL = 0.10


def _infeasible(row: TrialRow) -> bool:
    """A combination refused before it started (IncompatibleKnobs): not a failure of the code."""
    return (row.fail_reason or "").startswith("infeasible: ")


@dataclass
class Payback:
    search_spent_j: float  # every trial (failed ones included) and the warm-up runs
    isolation_spent_j: float
    trials: int
    failed_trials: int
    reused_trials: int  # exact duplicates: nothing ran
    provenance: str
    per_recommendation: list[dict[str, Any]]
    stopped_trials: int = 0  # stopped early as hopeless (their energy up to the stop counts)
    phase_reused_trials: int = 0  # resumed from a stored phase output (data, model or trained model)
    deployment: dict[str, Any] = field(default_factory=dict)  # retrains_per_month, predictions_per_month, stated
    noise: dict[str, Any] = field(default_factory=dict)  # rel, source: the floor a saving must clear
    infeasible_trials: int = 0  # combinations that cannot run here, refused before they started

    def outcomes(self) -> str:
        """How the trials ended, for a sentence: 'N failed, M infeasible, ...'."""
        infeasible = f"{self.infeasible_trials} infeasible before they started, " if self.infeasible_trials else ""
        return (f"{self.failed_trials} failed, {infeasible}{self.stopped_trials} stopped early, {self.reused_trials} "
                f"duplicates reused, {self.phase_reused_trials} resumed from stored phase outputs")

    @property
    def total_spent_j(self) -> float:
        return self.search_spent_j + self.isolation_spent_j


def _part(name: str, e0: float | None, e: float | None, rel: float, unit: str) -> dict[str, Any]:
    """One part of a saving (per training run, per 1,000 predictions): the figure as measured, the
    noise it must clear, and the saving that counts (0 inside the noise)."""
    if e0 is None or e is None:
        return {"saved_j": None, "noise_j": None, "counted_j": 0.0, "verdict": f"no {name} figure"}
    saved, noise = e0 - e, saving_noise_j(e0, e, rel)
    if abs(saved) <= noise:
        return {"saved_j": saved, "noise_j": noise, "counted_j": 0.0,
                "verdict": f"no saving {unit} (within the noise floor, ±{noise:,.3g} J)"}
    verdict = f"saves {saved:,.4g} J {unit}" if saved > 0 else f"costs {-saved:,.4g} J more {unit}"
    return {"saved_j": saved, "noise_j": noise, "counted_j": saved, "verdict": verdict}


def payback(search_rows: list[TrialRow], iso_rows: list[TrialRow], recs: list[Recommendation],
            baseline: TrialRow | None, predictions: int | None, overhead_j: float = 0.0,
            iso_overhead_j: float = 0.0, floor: NoiseFloor | None = None,
            deployment: dict[str, Any] | None = None) -> Payback:
    """What the search cost (every trial, failed ones included, warm-ups, and the isolation study)
    and when each recommendation repays it, for a deployment profile (retrainings and predictions a
    month; DEFAULT_DEPLOYMENT unless the experiment states one): the months until the training and
    prediction savings together repay the search, and the training runs or the predictions that
    would repay it alone. A saving inside the noise floor counts as none -- the floor measured by
    the isolation study's repeated baselines, else ASSUMED_NOISE_REL, said so."""
    provs = {r.provenance for r in search_rows + iso_rows if r.provenance}
    stated = dict(deployment or {})
    profile = {**DEFAULT_DEPLOYMENT, **stated, "stated": "in the experiment (report:)" if stated else
               "default (the experiment states none under report:)"}
    rel = floor.energy_rel if floor and floor.energy_rel is not None else None
    noise: dict[str, Any] = ({"rel": rel, "source": f"measured: the baseline's energy moved ±{100 * rel:.1f} % over {floor.runs} runs"}
             if rel is not None and floor is not None else
             {"rel": ASSUMED_NOISE_REL, "source": f"assumed ±{100 * ASSUMED_NOISE_REL:.0f} %: no repeated baseline "
                                                  "(run `greenknobs ablate --repeats 3` to measure it)"})
    pb = Payback(sum(r.spent_j for r in search_rows) + overhead_j, sum(r.spent_j for r in iso_rows) + iso_overhead_j,
                 len(search_rows),
                 sum(r.state == "FAIL" or (r.state == "PRUNED" and bool(r.fail_reason) and not _infeasible(r))
                     for r in search_rows),
                 sum(r.duplicate_of is not None for r in search_rows),
                 "measured" if provs == {"measured"} else "modelled", [],
                 stopped_trials=sum(r.state == "PRUNED" and bool(r.stop_reason) for r in search_rows),
                 phase_reused_trials=sum(r.reused_from is not None for r in search_rows),
                 deployment=profile, noise=noise,
                 infeasible_trials=sum(r.state == "PRUNED" and _infeasible(r) for r in search_rows))
    if baseline is None:
        return pb
    base_train, base_1k = training_energy(baseline), inference_per_1k(baseline, predictions)
    retrains, per_month = float(profile["retrains_per_month"]), float(profile["predictions_per_month"])
    for rec in recs:
        train = _part("training", base_train, rec.training_j, noise["rel"], "per training run")
        infer = _part("prediction", base_1k, rec.inference_j_per_1k, noise["rel"], "per 1,000 predictions")
        monthly = retrains * train["counted_j"] + per_month / 1000 * infer["counted_j"]
        total = pb.total_spent_j
        if monthly > 0:
            months: float | None = total / monthly
            verdict = (f"repays the search ({total:,.0f} J) in {months:,.1f} months at {retrains:g} retrainings and "
                       f"{per_month:,.0f} predictions a month")
        else:
            months = None
            why = ("neither saving is beyond the noise floor" if not train["counted_j"] and not infer["counted_j"]
                   else "its extra cost outweighs its saving at this deployment")
            verdict = f"never pays the search back: {why}"
        pb.per_recommendation.append({
            "kind": rec.kind, "trial": rec.trial,
            "saved_per_training_run_j": train["saved_j"], "training_noise_j": train["noise_j"],
            "training_verdict": train["verdict"],
            "saved_per_1k_predictions_j": infer["saved_j"], "prediction_noise_j": infer["noise_j"],
            "prediction_verdict": infer["verdict"],
            "saved_per_month_j": monthly, "months_to_repay": months, "verdict": verdict,
            "break_even_training_runs": total / train["counted_j"] if train["counted_j"] > 0 else None,
            "break_even_predictions": 1000 * total / infer["counted_j"] if infer["counted_j"] > 0 else None,
        })
    return pb


def to_plain(obj: Any) -> Any:
    """Dataclasses (and containers of them) as JSON-able values."""
    if hasattr(obj, "__dataclass_fields__"):
        d = asdict(obj)
        for name in ("energy_gap_pts", "quality_gap", "label", "total_spent_j"):
            if hasattr(obj, name):
                d[name] = getattr(obj, name)
        return d
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj

