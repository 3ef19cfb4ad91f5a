"""Which search strategy for a small budget: the same search space and trial budget with TPE
(multivariate), NSGA-II, GPSampler and random sampling, and the seed study's hand method (each
knob alone, then every knob value that kept quality combined) as the reference, over several
seeds. Each run is a complete search of the default experiment (its --quick data subset unless
--full), with phase-output reuse and hopeless-trial stops as the default search has them.

    python benchmarks/samplers.py [--seeds 42,43,44] [--trials 16] [--samplers tpe,nsga2,gp,random,hand] [--full]

Prints per strategy (mean and range over seeds): the hypervolume (energy as a fraction of the
baseline's, validation quality above the floor) at equal trials and at equal joules (the least any
run spent), and the best held-out saving: the largest energy saving among feasible trials whose
*test* macro-F1 kept the floor. Energy is whatever the meter gives here (labelled).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from search_bench import Outcome, run_search, scratch_experiment

from greenknobs.config import Experiment
from greenknobs.search import study as studies
from greenknobs.search.ablation import isolation_experiment, run_isolation


def hand_method(exp: Experiment, tracker):
    """The seed study's method: every searched knob value alone (once), then all values that kept
    quality combined -- per knob the one that saved most."""
    run_isolation(exp, tracker, repeats=1)
    study = studies.open_study(isolation_experiment(exp), create=False)
    trials = study.get_trials(deepcopy=False)
    base = next(t for t in trials if t.user_attrs.get("baseline") and t.state.name == "COMPLETE")
    base_e = base.values[0]
    best: dict[str, tuple[float, object]] = {}
    for t in trials:
        role = t.user_attrs.get("ablation") or {}
        summary = t.user_attrs.get("summary") or {}
        if role.get("kind") != "single" or t.state.name != "COMPLETE" or not summary.get("feasible"):
            continue
        saving = 1 - t.values[0] / base_e
        if saving > 0 and saving > best.get(role["knob"], (0.0, None))[0]:
            best[role["knob"]] = (saving, role["value"])
    combo = {knob: value for knob, (_, value) in best.items()}
    if len(combo) > 1:
        run_isolation(exp, tracker, repeats=1, combos=[combo])
    return studies.open_study(isolation_experiment(exp), create=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", default="experiments/bbc-news-minilm.yaml")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--samplers", default="tpe,nsga2,gp,random,hand")
    ap.add_argument("--full", action="store_true", help="the full data set (default: the --quick subset)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[Outcome]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed in seeds:
            for sampler in args.samplers.split(","):
                name = f"samplers-{sampler}-{seed}"
                exp = scratch_experiment(args.experiment, work, name, not args.full, seed=seed, trials=args.trials,
                                         sampler="tpe" if sampler == "hand" else sampler)
                out = run_search(exp, work, sampler, hand_method if sampler == "hand" else None)
                results.setdefault(sampler, []).append(out)
                saving, row = out.best_test_saving(exp.constraints.min_quality_retained or 0.97)
                print(f"  {sampler:<7} seed {seed}: {out.trials} trials, {out.spent_j:,.0f} J spent, "
                      f"hypervolume {out.hv:.4f}, best held-out saving {saving:.1f} %"
                      + (f" (trial {row.trial})" if row else ""), flush=True)
    floor = exp.constraints.min_quality_retained or 0.97
    equal_j = min(o.spent_j for outs in results.values() for o in outs)
    print(f"\n{len(seeds)} seeds, {args.trials} trials per search ({'full data' if args.full else '--quick subset'}); "
          f"energy {next(iter(results.values()))[0].provenance}; equal-joules point: {equal_j:,.0f} J")
    print(f"{'strategy':<8} {'trials':>6} {'spent J':>14} {'HV @ trials':>20} {'HV @ equal J':>20} "
          f"{'best test saving %':>22}")
    for sampler, outs in results.items():
        hv = [o.hv for o in outs]
        hv_j = [o.hv_at_joules(equal_j) for o in outs]
        save = [o.best_test_saving(floor)[0] for o in outs]
        spent = [o.spent_j for o in outs]
        trials = statistics.mean(o.trials for o in outs)

        def fmt(xs: list[float], p: int = 4) -> str:
            return f"{statistics.mean(xs):.{p}f} [{min(xs):.{p}f}-{max(xs):.{p}f}]"
        print(f"{sampler:<8} {trials:>6.0f} {statistics.mean(spent):>14,.0f} {fmt(hv):>20} {fmt(hv_j):>20} "
              f"{fmt(save, 1):>22}")


if __name__ == "__main__":
    main()
