"""A warm-started search against a cold one under the same energy budget, each charged everything
it spent (the warm arm pays for its --quick study out of its budget).

    python benchmarks/warm_start.py [--seeds 42 43 44] [--budget-j 5000]

Per seed, alone and one after the other:
  cold   the default search on the full data, energy budget --budget-j
  warm   the experiment's --quick study (its own budget), then the default search warm-started from
         it (``warm_start: [quick]``) with what is left of --budget-j

Prints per arm, over the seeds: joules spent (the warm arm's quick study included), trials, the best
held-out-feasible saving (chosen on validation, >= 97 % of the baseline's test quality) at 1/2 and all
of the budget, the hypervolume at 1/2 and all, and the energy model's error on the first 5 trials
of the full search (each predicted from the trials before it -- and, warm, from the quick study).
Records every run in benchmarks/results/warm_start.json. Energy is whatever the meter gives (here
modelled by the cpu-model: labelled so).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from search_arms import best_saving_by
from search_bench import Outcome, run_search

from greenknobs.config import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def shifted(out: Outcome, by_j: float) -> Outcome:
    """``out`` as if ``by_j`` joules had been spent before its first trial (the warm arm's quick study)."""
    return replace(out, spent_j=out.spent_j + by_j, spent_by_trial=[s + by_j for s in out.spent_by_trial])


def best_by(out: Outcome, joules: float, offset_j: float, floor: float) -> float:
    return best_saving_by(out, joules - offset_j, floor) if joules > offset_j else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", default="experiments/bbc-news-minilm.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--budget-j", type=float, default=5000.0)
    ap.add_argument("--arms", default="warm,cold")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "warm_start.json"))
    args = ap.parse_args()
    record: list[dict] = []
    b = args.budget_j

    def save() -> None:  # after every run, so an interrupted benchmark keeps what it measured
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "benchmark": "warm_start", "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": f"python benchmarks/warm_start.py --seeds {' '.join(map(str, args.seeds))} --budget-j {b:g} "
                       f"--arms {args.arms}",
            "machine": {"cpu": platform.machine(), "python": platform.python_version()}, "budget_j": b,
            "runs": record}, indent=2, default=str))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed in args.seeds:
            for arm in args.arms.split(","):
                name = f"ws-{arm}-{seed}"
                # one storage for the quick study and the search, as a user's would be
                storage, mlflow = f"sqlite:///{work}/{name}.db", f"sqlite:///{work}/{name}-mlflow.db"
                base = replace(load_experiment(args.experiment), name=name, storage=storage, mlflow_uri=mlflow,
                               seed=seed, timeout_s=None)
                quick_j, quick_trials = 0.0, 0
                if arm == "warm":
                    quick = run_search(replace(base.quick_variant(), timeout_s=None), work, "quick")
                    quick_j, quick_trials = quick.spent_j, quick.trials
                    full = replace(base, energy_budget_j=b - quick_j, warm_start=("quick",))
                else:
                    full = replace(base, energy_budget_j=b)
                out = shifted(run_search(full, work, arm), quick_j)
                floor = full.constraints.min_quality_retained or 0.97
                first = out.model_errors[:5]
                row = {"arm": arm, "seed": seed, "quick_j": quick_j, "quick_trials": quick_trials,
                       "spent_j": out.spent_j, "trials": out.trials, "wall_s": out.wall_s,
                       "best_saving_pct": best_by(out, float("inf"), 0.0, floor),
                       "best_saving_half_pct": best_by(out, b / 2, quick_j, floor),
                       "hv": out.hv, "hv_half": out.hv_at_joules(b / 2),
                       "hv_by_trial": out.hv_by_trial, "spent_by_trial": out.spent_by_trial,
                       "energy_model_errors": out.model_errors, "provenance": out.provenance}
                best = out.best_test_saving(floor)[1]
                row["best_trial"] = best.trial if best else None
                row["best_knobs"] = best.searched if best else None
                record.append(row)
                print(f"  {arm:<5} seed {seed}: quick {quick_trials} trials {quick_j:,.0f} J; search {out.trials} trials, "
                      f"{out.spent_j:,.0f} J in all, {out.wall_s / 60:.1f} min; best held-out saving "
                      f"{row['best_saving_pct']:.1f} % (at 1/2 budget {row['best_saving_half_pct']:.1f} %); "
                      f"energy model error on the first 5 trials "
                      f"{statistics.median(first) if first else float('nan'):.1%}", flush=True)
                save()
    print(f"\n{len(args.seeds)} seeds, energy budget {b:,.0f} J, full data; energy "
          f"{record[0]['provenance'] if record else '?'}; median [min-max] over seeds")
    print(f"{'arm':<5} {'trials':>6} {'spent J':>9} {'saving % @ 1/2':>15} {'@ all':>20} {'HV @ 1/2':>9} {'HV':>7} "
          f"{'model err, first 5':>19}")
    for arm in args.arms.split(","):
        rows = [r for r in record if r["arm"] == arm]
        if not rows:
            continue

        def med(key: str, rows: list[dict] = rows) -> float:
            return statistics.median(r[key] for r in rows)

        alls = [r["best_saving_pct"] for r in rows]
        errs = [e for r in rows for e in r["energy_model_errors"][:5]]
        print(f"{arm:<5} {med('trials'):>6.1f} {med('spent_j'):>9,.0f} {med('best_saving_half_pct'):>15.1f} "
              f"{statistics.median(alls):>8.1f} [{min(alls):.1f}-{max(alls):.1f}] {med('hv_half'):>9.4f} "
              f"{med('hv'):>7.4f} {statistics.median(errs) if errs else float('nan'):>18.1%}")
    print(f"\nrecorded in {args.out}")


if __name__ == "__main__":
    main()
