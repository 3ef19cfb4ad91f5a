"""The outage scenario of issue 19: two workers on one PostgreSQL study, logging to an MLflow
tracking server whose backend store is the same PostgreSQL, running the sleeping stand-in pipeline
(24 trials). 15 s in, PostgreSQL is restarted (fast shutdown, as ``pg_ctl restart -m fast``); 10 s
later the MLflow server is stopped for 15 s and started again on the same port.

    python benchmarks/outages.py [--trials 24] [--phase-s 0.5] [--training-s 2] [--pg-down-s 0] [--no-baseline]

``--pg-down-s``: keep PostgreSQL down that long between stop and start (a slow restart or a
fail-over; the test server's own restart takes well under a second).

Prints: each worker's exit code; trials completed; retries taken; what each fault cost (how long
each worker waited for the database, how long logging was deferred, and the wall time of the
whole search against the same search without faults); log records replayed; and what MLflow holds
at the end (one finished run per complete trial, nothing RUNNING).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenknobs.config import load_experiment
from greenknobs.search.study import open_study
from greenknobs.testing.services import mlflow_server, postgres_server
from greenknobs.tracking import Tracker

DB_LINE = re.compile(r"the study's database .*: unreachable at \S+ for ([\d.]+) s \((\d+) retries")
MLFLOW_LINE = re.compile(r"the MLflow tracking server: logging deferred at \S+ for ([\d.]+) s, (\d+) records kept, "
                         r"(\d+) replayed; (.*)")


def experiment(path: Path, name: str, storage: str, mlflow_uri: str, trials: int, phase_s: float,
               training_s: float) -> Path:
    path.write_text(yaml.safe_dump({
        "name": name,
        "pipeline": {"name": "greenknobs.testing.standin:SleepPipeline", "phase_s": phase_s, "training_s": training_s},
        "knobs": {"standin.width": {"class": "greenknobs.testing.standin:Width", "default": 4, "choices": [1, 2, 3, 4]},
                  "standin.depth": {"class": "greenknobs.testing.standin:Depth", "default": 8, "low": 1, "high": 256}},
        "constraints": {"min_quality_retained": 0.1, "beat_trivial_by": None},
        "budget": {"trials": trials}, "sampler": "random", "meter": "cpu-model",
        "reuse": {"enabled": False}, "stop_hopeless": {"enabled": False},
        "storage": storage, "mlflow_uri": mlflow_uri}))
    return path


def search(pg, ml, work: Path, name: str, args, faults: bool) -> dict:
    exp_path = experiment(work / f"{name}.yaml", name, pg.create_database(), ml.url, args.trials, args.phase_s,
                          args.training_s)
    log: list[str] = []

    def inject(t0: float) -> None:
        try:
            faults_at(t0)
        except Exception as exc:  # shown with the figures: a benchmark whose faults did not happen says so
            log.append(f"the fault injector failed: {type(exc).__name__}: {exc}")

    def faults_at(t0: float) -> None:
        time.sleep(max(0.0, t0 + 15 - time.monotonic()))
        began = time.monotonic()
        pg.restart(down_s=args.pg_down_s)
        log.append(f"PostgreSQL restarted at {began - t0:.1f} s: down {time.monotonic() - began:.1f} s")
        time.sleep(max(0.0, t0 + 25 - time.monotonic()))
        began = time.monotonic()
        ml.stop()
        down = time.monotonic()
        time.sleep(15)
        ml.start()
        log.append(f"MLflow server stopped at {began - t0:.1f} s (its shutdown took {down - began:.1f} s), down "
                   f"{time.monotonic() - down:.1f} s, back on the same port {ml.port}")

    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "greenknobs", "search", str(exp_path), "--heartbeat-s", "5"],
                              cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    injector = threading.Thread(target=inject, args=(started,), daemon=True) if faults else None
    if injector:
        injector.start()
    try:
        outs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
    wall = time.monotonic() - started
    if injector:
        injector.join(60)
    (work / f"{name}.out").write_text("\n\n".join(outs))
    if not pg.running():
        raise SystemExit("PostgreSQL is not running after the faults: " + "; ".join(log))
    study = open_study(load_experiment(exp_path), create=False)
    states = [t.state.name for t in study.trials]
    tracker = Tracker(ml.url, name, spool_dir=work / "no-spool")
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=10000)
    trial_runs = [r for r in runs if r.data.tags.get("greenknobs.role") == "trial"]
    complete = {t.number for t in study.trials if t.state.name == "COMPLETE"}
    finished_runs = [int(r.data.tags["trial"]) for r in trial_runs if r.info.status == "FINISHED"]
    return {"wall": wall, "codes": [p.returncode for p in procs], "outs": outs, "states": states, "log": log,
            "complete": len(complete), "one_run_each": sorted(finished_runs) == sorted(complete),
            "running_runs": sum(r.info.status == "RUNNING" for r in runs),
            "parents": sum(r.data.tags.get("greenknobs.role") == "study" for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--phase-s", type=float, default=0.5)
    ap.add_argument("--training-s", type=float, default=2.0)
    ap.add_argument("--pg-down-s", type=float, default=0.0, help="PostgreSQL stays down this long in its restart")
    ap.add_argument("--no-baseline", action="store_true", help="skip the same search without faults")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, postgres_server(Path(tmp) / "pg") as pg, \
            mlflow_server(pg.create_database("mlflow_backend"), Path(tmp) / "artifacts") as ml:
        work = Path(tmp)
        base = None if args.no_baseline else search(pg, ml, work, "outages-baseline", args, faults=False)
        run = search(pg, ml, work, "outages", args, faults=True)

    print(f"issue 19 scenario: 2 workers, {args.trials} trials of the sleeping stand-in "
          f"(~{4 * args.phase_s + args.training_s:.1f} s each), PostgreSQL study, MLflow server on PostgreSQL")
    for line in run["log"]:
        print(f"  fault: {line}")
    print(f"  workers' exit codes      : {run['codes']}")
    states = ", ".join(f"{s} {run['states'].count(s)}" for s in sorted(set(run["states"])))
    print(f"  trials completed         : {run['complete']} of {args.trials} (states: {states})")
    retries, replayed = 0, 0
    for i, out in enumerate(run["outs"]):
        for m in DB_LINE.finditer(out):
            retries += int(m.group(2))
            print(f"  worker {i + 1}: waited {float(m.group(1)):5.1f} s for the database ({m.group(2)} retries)")
        for m in MLFLOW_LINE.finditer(out):
            replayed += int(m.group(3))
            print(f"  worker {i + 1}: logging deferred {float(m.group(1)):5.1f} s, {m.group(2)} records kept, "
                  f"{m.group(3)} replayed; {m.group(4)}")
    print(f"  retries taken            : {retries} (database calls retried, both workers)")
    print(f"  log records replayed     : {replayed} (both workers)")
    print(f"  MLflow at the end        : {run['parents']} study run, one FINISHED run per complete trial: "
          f"{run['one_run_each']}, runs RUNNING: {run['running_runs']}")
    if base is not None:
        print(f"  wall time                : {run['wall']:.1f} s with the faults, {base['wall']:.1f} s without "
              f"(exit codes {base['codes']}): the faults cost {run['wall'] - base['wall']:+.1f} s")
    if any(run["codes"]):
        bad = next(o for c, o in zip(run["codes"], run["outs"]) if c)
        print("\na worker failed; its last lines:\n" + "\n".join(bad.splitlines()[-15:]))


if __name__ == "__main__":
    main()
