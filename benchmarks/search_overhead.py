"""What greenknobs itself costs per trial: Optuna storage + MLflow logging + verification, next to
the pipeline's own phases. Runs a search on the tiny config-built BERT (so the overhead is
visible) and on nothing else; prints per-trial figures and ratios.

    python benchmarks/search_overhead.py [--trials 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenknobs import search
from greenknobs.config import load_experiment
from greenknobs.testing.fixtures import make_tiny_csv, make_tiny_model_dir, tiny_experiment
from greenknobs.tracking import Tracker


class Timing:
    """Reporter that timestamps trial boundaries and sums the phases' own wall time."""

    def __init__(self):
        self.starts, self.ends, self.phase_s = {}, {}, {}

    def search_started(self, *a):
        pass

    def trial_started(self, number, *a):
        self.starts[number] = time.perf_counter()

    def phase_done(self, number, phase, result, so_far):
        self.phase_s[number] = self.phase_s.get(number, 0.0) + result.time_s

    def note(self, *a):
        pass

    def trial_done(self, number, *a, **k):
        self.ends[number] = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=12)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exp_path = tmp / "exp.yaml"
        exp_path.write_text(yaml.safe_dump(tiny_experiment(tmp, make_tiny_model_dir(tmp / "model"),
                                                           make_tiny_csv(tmp / "d.csv"), budget={"trials": args.trials})))
        exp = load_experiment(exp_path)
        t0 = time.perf_counter()
        tracker = Tracker(exp.mlflow_uri, exp.name)
        t_tracker = time.perf_counter() - t0
        timing = Timing()
        t1 = time.perf_counter()
        runner = search.Search(exp, tracker, timing)
        outcome = runner.run()
        t_search = time.perf_counter() - t1
        t2 = time.perf_counter()
        search.publish(exp, outcome.study, tracker)
        t_publish = time.perf_counter() - t2

    done = [n for n in timing.ends if n in timing.phase_s]
    trial_s = [timing.ends[n] - timing.starts[n] for n in done]
    phase_s = [timing.phase_s[n] for n in done]
    overhead_ms = [1000 * (t - p) for t, p in zip(trial_s, phase_s)]
    between_ms = 1000 * (t_search - sum(trial_s)) / max(len(done), 1)
    print(f"trials: {len(done)} on a 2-layer, 32-wide BERT over 90 texts (cpu-model meter, SQLite + local MLflow)")
    print(f"  pipeline phases per trial     : median {statistics.median(phase_s) * 1000:8.1f} ms")
    print("  in-trial overhead (MLflow run, knob verification, Optuna attrs)")
    print(f"                                : median {statistics.median(overhead_ms):8.1f} ms "
          f"(min {min(overhead_ms):.1f}, max {max(overhead_ms):.1f})")
    print(f"  between trials (Optuna ask/tell, sampler, study start-up amortised): {between_ms:8.1f} ms per trial")
    print(f"  opening MLflow store          : {t_tracker * 1000:8.1f} ms (first use creates the schema)")
    print(f"  publishing the front (CSV, HTML+PNG plots, MLflow artifacts): {t_publish * 1000:8.1f} ms")
    per_trial = statistics.median(overhead_ms) + between_ms
    print(f"  => greenknobs costs ~{per_trial:.0f} ms per trial; for a 60 s MiniLM trial that is "
          f"{100 * per_trial / 60000:.2f} % of its time")


if __name__ == "__main__":
    main()
