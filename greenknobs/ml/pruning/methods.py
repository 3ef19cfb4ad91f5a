"""One entry point, ``prune``, for every layer-selection method, one-shot or iterative.

One-shot: score the blocks once on the unpruned model and remove ``n_remove`` of them.
Iterative: remove one block per round, re-scoring the already pruned (and compensated) model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from greenknobs.errors import KnobError
from greenknobs.ml.layers import find_layer_stack, keep_layers
from greenknobs.ml.pruning import compensation, merge, scores
from greenknobs.ml.pruning.calibration import Calibration, layer_stats
from greenknobs.ml.pruning.mask import train_layer_mask
from greenknobs.runtime import process_cpu_seconds

METHODS = ("top", "bottom", "block_influence", "angular", "iterative_loss", "iterative_metric", "learned_mask", "merge")
_NEEDS_CALIBRATION = {"block_influence", "angular", "iterative_loss", "iterative_metric", "learned_mask", "merge"}


@dataclass
class PruneReport:
    method: str
    iterative: bool
    compensation: bool
    n_remove: int
    layers_before: int
    layers_after: int = 0
    removed: list[int] = field(default_factory=list)  # original indices deleted (or merged away)
    merged: list[list[int]] = field(default_factory=list)  # [kept, absorbed] original indices per merge
    alphas: list[float] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per round: scores by original index, choice
    score_name: str = ""
    calibration_samples: int = 0
    calibration_tokens: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune(model: nn.Module, n_remove: int, method: str, *, iterative: bool = False, compensation_on: bool = False,
          calibration: Calibration | None = None, dev: Calibration | None = None, task: str | None = None,
          mask_steps: int = 40, seed: int = 0) -> PruneReport:
    """Remove ``n_remove`` blocks from ``model`` in place and say which, why, and at what cost."""
    if method not in METHODS:
        raise KnobError(f"unknown pruning method {method!r}; known: {', '.join(METHODS)}")
    n = len(find_layer_stack(model)[2])
    if not 0 <= n_remove < n:
        raise KnobError(f"cannot remove {n_remove} of {n} layers (at least one must remain)")
    if (method in _NEEDS_CALIBRATION or compensation_on) and calibration is None:
        raise KnobError(f"pruning method {method!r}{' with compensation' if compensation_on else ''} needs calibration data")
    if method == "merge":
        if compensation_on:
            raise compensation.CompensationNotApplicable(
                "magnitude compensation applies to deleted blocks; the merge method keeps a merged block in place")
        merge.check_mergeable(model)
    task = task or scores.task_of(model)
    wall0, cpu0 = time.perf_counter(), process_cpu_seconds()
    report = PruneReport(method, iterative, compensation_on, n_remove, n)
    if calibration is not None:
        report.calibration_samples, report.calibration_tokens = calibration.n_samples, calibration.n_tokens
    if compensation_on and n_remove:
        assert calibration is not None
        compensation.require_pre_norm(model, calibration)
    objective = None
    if method in ("iterative_loss", "iterative_metric"):
        assert calibration is not None
        objective = scores.Objective("loss" if method == "iterative_loss" else "metric", task, calibration, dev)
        report.score_name = objective.name
    alive = list(range(n))  # current position -> original index
    per_round = [1] * n_remove if iterative else ([n_remove] if n_remove else [])
    for k in per_round:
        if method == "merge":
            assert calibration is not None
            _merge_round(model, k, calibration, alive, report)
            continue
        stats = layer_stats(model, calibration) if (calibration is not None and (
            compensation_on or method in ("block_influence", "angular"))) else None
        chosen, named, rule = _choose(model, k, method, stats, objective, calibration, task, mask_steps,
                                      seed + len(report.rounds))
        report.score_name = report.score_name or _SCORE_NAMES.get(method, "")
        entry: dict[str, Any] = {"rule": rule, "alive": list(alive), "scores": {alive[i]: s for i, s in named.items()},
                                 "removed": [alive[i] for i in chosen]}
        if compensation_on:
            entry["alpha"] = []
            assert stats is not None  # computed whenever compensation is on
            for start, stop in reversed(_runs(chosen)):  # fuse the deepest gap first
                alpha = compensation.estimate_alpha(stats, start, stop)
                compensation.fuse_alpha(model, start, alpha)
                entry["alpha"].append(alpha)
                report.alphas.append(alpha)
        keep_layers(model, [i for i in range(len(alive)) if i not in set(chosen)])
        report.removed += entry["removed"]
        alive = [o for i, o in enumerate(alive) if i not in set(chosen)]
        report.rounds.append(entry)
    report.layers_after = len(find_layer_stack(model)[2])
    report.removed.sort()
    report.wall_s, report.cpu_s = time.perf_counter() - wall0, process_cpu_seconds() - cpu0
    return report


_SCORE_NAMES = {"block_influence": "block_influence (1 - cos)", "angular": "angular distance of the block starting here",
                "learned_mask": "mask logit", "top": "", "bottom": ""}


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs [start, stop) of sorted positions."""
    runs: list[tuple[int, int]] = []
    for p in sorted(positions):
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


def _lowest(values: list[float], k: int) -> list[int]:
    return sorted(sorted(range(len(values)), key=lambda i: (values[i], i))[:k])


# How each method chose, as recorded in every round ("rule") and re-checked by choice_problem.
RULES = {"top": "last k blocks", "bottom": "first k blocks", "block_influence": "k lowest scores",
         "angular": "k-block run starting at the lowest score", "iterative_loss": "k highest scores",
         "iterative_metric": "k highest scores", "learned_mask": "k lowest scores"}


def _choose(model, k, method, stats, objective, calibration, task, mask_steps,
            seed) -> tuple[list[int], dict[int, float], str]:
    """Positions (in the current model) to remove this round, the scores behind the choice, and
    the rule that turned the scores into the choice."""
    n = len(find_layer_stack(model)[2])
    if method == "top":
        return list(range(n - k, n)), {}, RULES[method]
    if method == "bottom":
        return list(range(k)), {}, RULES[method]
    if method == "block_influence":
        bi = scores.block_influence(stats)
        return _lowest(bi, k), dict(enumerate(bi)), RULES[method]
    if method == "angular":
        d = scores.angular_distances(stats, k)
        start = min(range(len(d)), key=lambda i: (d[i], i))
        return list(range(start, start + k)), dict(enumerate(d)), RULES[method]
    if method in ("iterative_loss", "iterative_metric"):
        kept_quality = scores.score_removals(model, objective)
        harm = [-q for q in kept_quality]  # lowest harm = highest objective without the block
        return _lowest(harm, k), dict(enumerate(kept_quality)), RULES[method]
    if method == "learned_mask":
        logits = train_layer_mask(model, n - k, calibration, task, steps=mask_steps, seed=seed).tolist()
        return _lowest(logits, k), dict(enumerate(logits)), RULES[method]
    raise KnobError(method)


def choice_problem(method: str, rnd: dict[str, Any]) -> str | None:
    """Re-derive a round's removals from the scores it recorded under ``method``'s rule: None
    when they match, else what differs. A method that was asked for but did not choose fails here."""
    if method == "merge":
        return None if rnd.get("merges") else "no pair was merged"
    alive, removed = rnd.get("alive"), sorted(rnd["removed"])
    if rnd.get("rule") != RULES.get(method) or alive is None:
        return f"the round was chosen by {rnd.get('rule')!r}, not by {method}'s rule {RULES.get(method)!r}"
    k = len(removed)
    positions = list(range(len(alive)))
    by_pos = {i: rnd["scores"].get(alive[i], rnd["scores"].get(str(alive[i]))) for i in positions}
    if method == "top":
        want = positions[len(alive) - k:]
    elif method == "bottom":
        want = positions[:k]
    elif method == "angular":
        starts = [i for i in positions if by_pos[i] is not None]
        start = min(starts, key=lambda i: (by_pos[i], i))
        want = list(range(start, start + k))
    else:
        scored = [i for i in positions if by_pos[i] is not None]
        sign = -1.0 if method.startswith("iterative") else 1.0
        want = sorted(sorted(scored, key=lambda i: (sign * by_pos[i], i))[:k])
    expected = sorted(alive[i] for i in want)
    return None if expected == removed else f"removed {removed}, but {method}'s rule on its scores picks {expected}"


def _merge_round(model: nn.Module, k: int, calibration: Calibration, alive: list[int], report: PruneReport) -> None:
    """Merge the k disjoint adjacent pairs with the lowest total BI_i + BI_{i+1} (deepest first)."""
    bi = scores.block_influence(layer_stats(model, calibration))
    if 2 * k > len(bi):
        raise KnobError(f"cannot merge {k} disjoint pairs of {len(bi)} layers in one shot; use model.pruning_iterative=true")
    pairs = _cheapest_disjoint_pairs([bi[i] + bi[i + 1] for i in range(len(bi) - 1)], k)
    importance = merge.channel_importance(model, calibration, sorted({p for i in pairs for p in (i, i + 1)}))
    entry: dict[str, Any] = {"scores": {alive[i]: s for i, s in enumerate(bi)}, "removed": [], "merges": []}
    for pos in sorted(pairs, reverse=True):
        info = merge.merge_pair(model, pos, importance, bi[pos], bi[pos + 1])
        report.merged.append([alive[pos], alive[pos + 1]])
        entry["removed"].append(alive[pos + 1])
        entry["merges"].append({"pair": [alive[pos], alive[pos + 1]], **info})
        del alive[pos + 1]
    report.removed += entry["removed"]
    report.rounds.append(entry)
    report.score_name = "block_influence (1 - cos)"


def _cheapest_disjoint_pairs(pair_cost: list[float], k: int) -> list[int]:
    """Start indices of k non-overlapping pairs (i, i+1) minimising the summed cost (exact DP;
    a greedy pick can block a feasible tiling, e.g. 4 pairs out of 8 layers)."""
    n = len(pair_cost) + 1  # layers
    inf = float("inf")
    # best[i][c]: least cost of c pairs among layers i..n-1
    best = [[0.0 if c == 0 else inf for c in range(k + 1)] for _ in range(n + 2)]
    for i in range(n - 2, -1, -1):
        for c in range(1, k + 1):
            best[i][c] = min(best[i + 1][c], pair_cost[i] + best[i + 2][c - 1])
    pairs, i, c = [], 0, k
    while c:
        if pair_cost[i] + best[i + 2][c - 1] <= best[i + 1][c]:
            pairs.append(i)
            i, c = i + 2, c - 1
        else:
            i += 1
    return pairs
