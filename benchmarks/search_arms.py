"""Search strategies side by side under one energy budget, each charged everything it spent.

    python benchmarks/search_arms.py [--seeds 42 43 44] [--budget-j 1500] [--full] [--arms plain,default,new,random,hand]

Arms (same experiment space and seed per round, run one after the other, alone, seeds interleaved):
  plain    TPE, no phase reuse, no early stops
  default  TPE with phase reuse and the halfway stop (trivial level, below the floor): the search
           before the energy model
  new      the current default: also successive halving on two objectives at rungs 25 % and 50 % of
           training (stopping trials that cannot reach the front, by the energy model's prediction),
           candidates predicted dearer than the most accurate trial not started, and TPE weighing its
           candidates by expected improvement per predicted joule (cost-aware)
  random   random sampling, no reuse, no stops
  hand     the seed study's hand method: each knob value alone, then the best values combined (no
           reuse, no stops)
Every arm keeps the energy budget as a promise (a trial predicted to cross it is not started).

Prints, per arm over the seeds: joules spent, trials, hypervolume at the end and at 1/4, 1/2 of the
budget, and the best held-out-feasible saving (chosen on validation, >= 97 % of the baseline's test
quality) at 1/4, 1/2 and all of the budget; records every run in benchmarks/results/search_arms.json.
Energy is whatever the meter gives (here modelled by the cpu-model: labelled so).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
from pathlib import Path

from samplers import hand_method
from search_bench import Outcome, run_search, scratch_experiment

from greenknobs.config import Reuse, StopHopeless
from greenknobs.report.plots import curves_png

ROOT = Path(__file__).resolve().parents[1]
OFF = StopHopeless(enabled=False)
ARMS = {
    "plain": {"reuse": Reuse(enabled=False), "stop_hopeless": OFF, "cost_aware": False},
    "default": {"stop_hopeless": StopHopeless(rungs=(), before_start=False), "cost_aware": False},
    "new": {},
    "random": {"sampler": "random", "reuse": Reuse(enabled=False), "stop_hopeless": OFF},
    "hand": {"reuse": Reuse(enabled=False), "stop_hopeless": OFF},
}


def best_saving_by(out: Outcome, joules: float, floor: float) -> float:
    """The best held-out-feasible saving among trials finished by the time ``joules`` were spent."""
    best, spent = 0.0, 0.0
    for row in sorted(out.rows, key=lambda r: r.trial):
        spent += row.spent_j
        if spent > joules:
            break
        kept = row.complete and row.feasible and (row.test_quality_retained_pct or 0.0) >= 100 * floor
        if kept:
            best = max(best, row.energy_saving_pct or 0.0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", default="experiments/bbc-news-minilm.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--budget-j", type=float, default=1500.0)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--full", action="store_true", help="the full data set (default: the --quick subset)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_arms.json"))
    args = ap.parse_args()
    arms = args.arms.split(",")
    results: dict[str, list[Outcome]] = {arm: [] for arm in arms}
    floor = 0.97
    record: list[dict] = []

    def save() -> None:  # after every run, so an interrupted benchmark keeps what it measured
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "benchmark": "search_arms", "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": "python benchmarks/search_arms.py " + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items() if k != "out" and v is not False),
            "machine": {"cpu": platform.machine(), "python": platform.python_version()}, "budget_j": args.budget_j,
            "quick": not args.full, "runs": record}, indent=2, default=str))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed in args.seeds:
            for arm in arms:
                name = f"arms-{arm}-{seed}"
                exp = scratch_experiment(args.experiment, work, name, not args.full, seed=seed, trials=args.trials,
                                         energy_budget_j=args.budget_j, **ARMS[arm])
                out = run_search(exp, work, arm, hand_method if arm == "hand" else None)
                floor = exp.constraints.min_quality_retained or floor
                results[arm].append(out)
                saving = best_saving_by(out, float("inf"), floor)
                record.append({"arm": arm, "seed": seed, "spent_j": out.spent_j, "trials": out.trials, "hv": out.hv,
                               "wall_s": out.wall_s, "best_saving_pct": saving,
                               "hv_by_trial": out.hv_by_trial, "spent_by_trial": out.spent_by_trial,
                               "provenance": out.provenance, "energy_model_errors": out.model_errors})
                print(f"  {arm:<8} seed {seed}: {out.trials} trials, {out.spent_j:,.0f} J, {out.wall_s / 60:.1f} min, "
                      f"hypervolume {out.hv:.4f}, best held-out saving {saving:.1f} %", flush=True)
                save()
    b = args.budget_j
    provenance = next(iter(results.values()))[0].provenance
    print(f"\n{len(args.seeds)} seeds, energy budget {b:,.0f} J ({'full data' if args.full else '--quick subset'}); "
          f"energy {provenance}; median [min-max] over seeds")
    print(f"{'arm':<8} {'trials':>6} {'spent J':>9} {'HV @ 1/4':>10} {'HV @ 1/2':>10} {'HV':>10} "
          f"{'saving % @ 1/4':>16} {'@ 1/2':>8} {'@ all':>8}")

    def fmt(xs: list[float], p: int) -> str:
        return f"{statistics.median(xs):.{p}f}"

    for arm, outs in results.items():
        print(f"{arm:<8} {statistics.median(o.trials for o in outs):>6.1f} {fmt([o.spent_j for o in outs], 0):>9} "
              f"{fmt([o.hv_at_joules(b / 4) for o in outs], 4):>10} {fmt([o.hv_at_joules(b / 2) for o in outs], 4):>10} "
              f"{fmt([o.hv for o in outs], 4):>10} {fmt([best_saving_by(o, b / 4, floor) for o in outs], 1):>16} "
              f"{fmt([best_saving_by(o, b / 2, floor) for o in outs], 1):>8} "
              f"{fmt([best_saving_by(o, float('inf'), floor) for o in outs], 1):>8}  "
              f"[{min(best_saving_by(o, float('inf'), floor) for o in outs):.1f}-"
              f"{max(best_saving_by(o, float('inf'), floor) for o in outs):.1f}]")
    errors = [e for outs in results.values() for o in outs for e in o.model_errors]
    if errors:
        print(f"\nenergy model, each trial predicted from the trials before it (all arms, {len(errors)} predictions): "
              f"median absolute error {statistics.median(errors):.1%}, 90th percentile "
              f"{sorted(errors)[int(0.9 * (len(errors) - 1))]:.1%}")
    save()
    png = curves_png({arm: [([0.0, *o.spent_by_trial], [0.0, *o.hv_by_trial]) for o in outs] for arm, outs in results.items()},
                     Path(args.out).with_suffix(".png"), f"search energy spent (J, {provenance})", "hypervolume",
                     f"hypervolume against joules spent, {len(args.seeds)} seeds, one line per seed")
    print(f"\nrecorded in {args.out}; hypervolume against joules in {png}")


if __name__ == "__main__":
    main()
