"""How noisy is one trial's energy? Runs an experiment's baseline (every knob at its default) k
times in one process and prints, per phase, the median energy and the spread (max - min), with
the meter and its provenance. Use it to judge which differences on a Pareto front are real.

    python benchmarks/baseline_spread.py experiments/bbc-news-minilm.yaml [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenknobs.config import load_experiment
from greenknobs.meters import create_meter
from greenknobs.phases import PHASES
from greenknobs.pipeline import pipeline_class, run_trial
from greenknobs.runtime import detect_runtime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    exp = load_experiment(args.experiment)
    if args.quick:
        exp = exp.quick_variant()
    pipeline = pipeline_class(exp.pipeline)(exp.pipeline_options)
    runtime = detect_runtime(exp.device)
    knobs = [(s.knob, s.default) for s in exp.knobs]
    runs = []
    for i in range(args.repeats):
        meter = create_meter(exp.meter.name, exp.meter.params)
        try:
            result = run_trial(pipeline, knobs, meter, runtime, exp.seed)
        finally:
            meter.close()
        runs.append(result)
        print(f"run {i + 1}: {result.energy_j:.1f} J {result.provenance} ({result.meter}), "
              f"{result.time_s:.1f} s, {exp.objectives.quality_metric} "
              f"{result.quality['validation'][exp.objectives.quality_metric]:.4f}", flush=True)
    print(f"\n{exp.name} baseline, {args.repeats} runs, meter {runs[0].meter} ({runs[0].provenance})")
    print(f"{'phase':<10} {'median J':>10} {'min J':>9} {'max J':>9} {'spread %':>9}")
    for phase in (*PHASES, "total"):
        vals = [r.energy_j if phase == "total" else r.phases[phase].energy_j for r in runs]
        med = statistics.median(vals)
        spread = 100 * (max(vals) - min(vals)) / med if med else 0.0
        print(f"{phase:<10} {med:10.1f} {min(vals):9.1f} {max(vals):9.1f} {spread:9.1f}")
    q = [r.quality["validation"][exp.objectives.quality_metric] for r in runs]
    print(f"{exp.objectives.quality_metric}: {min(q):.4f} .. {max(q):.4f} (same seed every run)")


if __name__ == "__main__":
    main()
