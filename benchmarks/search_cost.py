"""What phase-output reuse and hopeless-trial stops save: the same N-trial search of the default
experiment (same sampler, same seed), once with both and once with neither, in one run.

    python benchmarks/search_cost.py [--trials 24] [--seeds 42 43 44] [--full] [--experiment experiments/bbc-news-minilm.yaml]

Prints for each: the energy the search spent (every trial, failed and stopped ones included, the
store's reads and writes, the warm-up), its wall time, trials stopped early and trials run on a
stored model, and the hypervolume reached (energy as a fraction of the baseline's, validation
quality above the floor); then the ratios. Target: <= 0.5x the energy at equal or better
hypervolume. Uses the --quick data subset unless --full.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from search_bench import run_search, scratch_experiment

from greenknobs.config import Reuse, StopHopeless


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", default="experiments/bbc-news-minilm.yaml")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="sampler seeds, one pair of searches each (default: the experiment's seed)")
    ap.add_argument("--full", action="store_true", help="the full data set (default: the --quick subset)")
    args = ap.parse_args()
    ratios = []
    for seed in args.seeds or [None]:
        ratios.append(compare(args, seed))
    if len(ratios) > 1:
        print(f"\nover {len(ratios)} seeds (min / median / max):")
        for i, what in enumerate(("energy", "wall time", "hypervolume")):
            values = sorted(r[i] for r in ratios)
            print(f"  {what:<12} {values[0]:.2f}x / {statistics.median(values):.2f}x / {values[-1]:.2f}x")
        print("  target: energy <= 0.5x at hypervolume >= 1.0x")


def compare(args, seed: int | None) -> tuple[float, float, float]:
    """One pair of searches (neither / reuse + stops) with the same sampler seed: their ratios."""
    seeded = {} if seed is None else {"seed": seed}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plain = scratch_experiment(args.experiment, work, "plain", not args.full, trials=args.trials,
                                   reuse=Reuse(enabled=False), stop_hopeless=StopHopeless(enabled=False), **seeded)
        cheap = scratch_experiment(args.experiment, work, "reuse-and-stops", not args.full, trials=args.trials,
                                   **seeded)
        outcomes = [run_search(exp, work, label) for exp, label in
                    ((plain, "neither"), (cheap, "reuse + stops"))]
    print(f"\n{args.trials}-trial search of {args.experiment} ({'full data' if args.full else '--quick subset'}), "
          f"sampler {cheap.sampler}, seed {cheap.seed}; energy {outcomes[0].provenance}")
    print(f"{'':<14} {'spent J':>10} {'wall s':>8} {'stopped':>8} {'on stored':>10} {'duplicates':>11} {'hypervolume':>12} "
          f"{'best test saving %':>19}")
    floor = cheap.constraints.min_quality_retained or 0.97
    for o in outcomes:
        stopped = sum(r.state == "PRUNED" for r in o.rows)
        stored = sum(r.reused_from is not None for r in o.rows)
        dups = sum(r.duplicate_of is not None for r in o.rows)
        print(f"{o.label:<14} {o.spent_j:>10,.0f} {o.wall_s:>8.0f} {stopped:>8} {stored:>10} {dups:>11} {o.hv:>12.4f} "
              f"{o.best_test_saving(floor)[0]:>19.1f}")
    a, b = outcomes
    ratios = (b.spent_j / a.spent_j, b.wall_s / a.wall_s, b.hv / a.hv if a.hv else float("nan"))
    print(f"\nreuse + stops / neither: energy {ratios[0]:.2f}x, wall time {ratios[1]:.2f}x, "
          f"hypervolume {ratios[2]:.2f}x (target: energy <= 0.5x at hypervolume >= 1.0x)")
    # per joule: where the search without either stood when it had spent what the other spent in all
    print(f"at equal joules ({b.spent_j:,.0f} J): hypervolume {b.hv:.4f} with reuse + stops, "
          f"{a.hv_at_joules(b.spent_j):.4f} without", flush=True)
    return ratios


if __name__ == "__main__":
    main()
