"""What coordinating many workers costs: 1, 2, 4 and 8 workers on one study in a local PostgreSQL,
logging to a local MLflow tracking server (PostgreSQL backend), running the stand-in pipeline whose
trials sleep a fixed time (so the two cores are not the limit; the orchestration is what is measured).
The space has 4 x 256 knob combinations, so random sampling rarely repeats one; a repeat (answered
from the study without running) is left out of the figures.

    python benchmarks/coordination.py [--workers 1,2,4,8] [--trials-per-worker 10] [--phase-s 0.3]

Prints, per worker count: trials per minute in the steady state (first trial start to last trial
end, from the study's own timestamps), the ratio to perfectly linear scaling of the 1-worker rate,
and the per-trial overhead (a trial's wall time minus the time its phases sleep). Target: >= 0.9x
linear up to 8 workers.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenknobs.config import load_experiment
from greenknobs.search.study import open_study
from greenknobs.testing.services import mlflow_server, postgres_server


def experiment(path: Path, storage: str, mlflow_uri: str, trials: int, phase_s: float, name: str) -> Path:
    path.write_text(yaml.safe_dump({
        "name": name,
        "pipeline": {"name": "greenknobs.testing.standin:SleepPipeline", "phase_s": phase_s},
        "knobs": {"standin.width": {"class": "greenknobs.testing.standin:Width", "default": 4, "choices": [1, 2, 3, 4]},
                  "standin.depth": {"class": "greenknobs.testing.standin:Depth", "default": 8, "low": 1, "high": 256}},
        "constraints": {"min_quality_retained": 0.1, "beat_trivial_by": None},
        "budget": {"trials": trials}, "sampler": "random", "meter": "cpu-model",
        # every trial sleeps all five phases: stored phase outputs would skip some and hide the overhead
        "reuse": {"enabled": False}, "stop_hopeless": {"enabled": False},
        "storage": storage, "mlflow_uri": mlflow_uri}))
    return path


def run(n: int, per_worker: int, phase_s: float, pg, ml_url: str, work: Path) -> dict:
    storage = pg.create_database()
    exp_path = experiment(work / f"exp{n}.yaml", storage, ml_url, n * per_worker, phase_s, f"coordination-{n}")
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "greenknobs", "search", str(exp_path)], cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    errors = [p.communicate(timeout=1800)[1] for p in procs]
    wall = time.monotonic() - started
    bad = [e for p, e in zip(procs, errors) if p.returncode != 0]
    if bad:
        raise SystemExit(f"{len(bad)} worker(s) failed:\n{bad[0][-2000:]}")
    study = open_study(load_experiment(exp_path), create=False)
    # trials that ran (a repeated knob combination is answered from the study without running)
    done = [t for t in study.trials if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    trial_s = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    return {"workers": n, "trials": len(done), "span_s": span, "per_min": 60 * len(done) / span,
            "trial_s": statistics.median(trial_s), "overhead_s": statistics.median(trial_s) - 5 * phase_s,
            "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--trials-per-worker", type=int, default=10)
    ap.add_argument("--phase-s", type=float, default=0.3, help="each of the five phases sleeps this long")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with postgres_server(work / "pg") as pg, mlflow_server(pg.create_database("mlflow"), work / "artifacts") as ml:
            rows = [run(n, args.trials_per_worker, args.phase_s, pg, ml.url, work) for n in counts]
    base = rows[0]["per_min"] / rows[0]["workers"]
    print(f"stand-in trials: 5 phases x {args.phase_s:.2f} s of sleep = {5 * args.phase_s:.2f} s; "
          f"{args.trials_per_worker} trials per worker; PostgreSQL storage, MLflow server (PostgreSQL backend)")
    print(f"{'workers':>7} {'trials':>6} {'trials/min':>11} {'x linear':>9} {'trial s (median)':>17} "
          f"{'overhead s/trial':>17} {'wall s':>7}")
    for r in rows:
        ratio = r["per_min"] / (base * r["workers"])
        print(f"{r['workers']:>7} {r['trials']:>6} {r['per_min']:>11.1f} {ratio:>9.2f} {r['trial_s']:>17.2f} "
              f"{r['overhead_s']:>17.2f} {r['wall_s']:>7.0f}")


if __name__ == "__main__":
    main()
