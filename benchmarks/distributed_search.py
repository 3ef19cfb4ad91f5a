"""The default search on several workers: the default experiment (its --quick data subset, real MiniLM
and BBC News), one study in a local PostgreSQL, MLflow on a local tracking server, N worker
processes started together (`greenknobs search` each), an energy budget shared by all of them.

    python benchmarks/distributed_search.py [--workers 3] [--budget-j 1500] [--trials 30]

Shows what the issue asks of the search with several workers: successive-halving rungs judged
across workers (a rung's verdict reads the rung records every worker wrote to the study),
candidates predicted dominated and budget refusals, and nothing run twice (no two trials that ran
share their canonical knob values; a repeat is answered from the study). Prints one line per trial
(worker, state, spent J, rungs, why it stopped) and the totals; writes
benchmarks/results/distributed_search.json. Energy is whatever the meter gives (here modelled).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenknobs.config import load_experiment
from greenknobs.search import study as studies
from greenknobs.testing.services import mlflow_server, postgres_server

ROOT = Path(__file__).resolve().parents[1]


def experiment(path: Path, storage: str, mlflow_uri: str, trials: int, budget_j: float) -> Path:
    raw = yaml.safe_load((ROOT / "experiments" / "bbc-news-minilm.yaml").read_text())
    raw["pipeline"].update(raw.pop("quick")["pipeline"])  # the --quick data subset, as a study of its own
    raw.update(name="distributed-search", storage=storage, mlflow_uri=mlflow_uri,
               budget={"trials": trials, "energy_j": budget_j})
    path.write_text(yaml.safe_dump(raw))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--budget-j", type=float, default=1500.0)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed_search.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with postgres_server(work / "pg") as pg, mlflow_server(pg.create_database("mlflow"), work / "artifacts") as ml:
            exp_path = experiment(work / "exp.yaml", pg.create_database(), ml.url, args.trials, args.budget_j)
            started = time.monotonic()
            procs = [subprocess.Popen([sys.executable, "-m", "greenknobs", "search", str(exp_path)], cwd=work,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for _ in range(args.workers)]
            try:
                logs = [p.communicate(timeout=3600)[0] for p in procs]
            finally:
                for p in procs:  # what we start, we stop
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            wall = time.monotonic() - started
            for i, (p, log) in enumerate(zip(procs, logs)):
                if p.returncode != 0:
                    raise SystemExit(f"worker {i} exited {p.returncode}:\n{log[-3000:]}")
            exp = load_experiment(exp_path)
            study = studies.open_study(exp, create=False)
            rows = summarise(study)
            spent = studies.spent_j(study)
            front = [(t.number, t.values[0], t.values[1]) for t in studies.front_trials(study)]
    pids = sorted({r["worker"] for r in rows if r["worker"]})
    print(f"{args.workers} workers, PostgreSQL study, MLflow server; budget {args.budget_j:,.0f} J, {args.trials} trials "
          f"at most; {wall / 60:.1f} min wall")
    print(f"{'trial':>5} {'worker':>7} {'state':>9} {'spent J':>8}  rungs (validation quality)   why")
    for r in rows:
        rungs = " ".join(f"{k}:{v:.3f}" for k, v in r["rungs"].items()) or "-"
        print(f"{r['number']:>5} {pids.index(r['worker']) if r['worker'] in pids else '-':>7} {r['state']:>9} "
              f"{r['spent_j']:>8.1f}  {rungs:<28} {r['why'][:90]}")
    ran = [r for r in rows if r["ran"]]
    seen = collections.Counter(json.dumps(r["values"], sort_keys=True, default=str) for r in ran)
    twice = [v for v, n in seen.items() if n > 1]
    stopped_at = collections.Counter(r["stopped_at"] for r in rows if r["stopped_at"])
    judged_across = sum(1 for r in rows if r["rung_judged_on_other_workers"])
    print(f"\ntrials per worker: {dict(collections.Counter(pids.index(r['worker']) for r in ran if r['worker'] in pids))}; "
          f"ran {len(ran)}, answered from the study {sum(r['state'] == 'duplicate' for r in rows)}, "
          f"not started {sum(r['state'] == 'skipped' for r in rows)}")
    print(f"stopped at a rung: {dict(stopped_at) or 'none'}; rung verdicts that read other workers' rung records: "
          f"{judged_across}")
    print(f"run twice (same canonical knob values, both ran): {len(twice)}")
    print(f"spent {spent:,.0f} J of {args.budget_j:,.0f} J; front: " + ", ".join(f"#{n} {e:.0f} J {q:.3f}" for n, e, q in front))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "benchmark": "distributed_search", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "workers": args.workers, "budget_j": args.budget_j, "wall_s": wall, "spent_j": spent, "run_twice": len(twice),
        "front": front, "trials": rows}, indent=2, default=str))
    print(f"recorded in {args.out}")
    if twice:
        raise SystemExit("a knob combination ran twice")


def summarise(study) -> list[dict]:
    """One record per trial: who ran it, what it spent, its rungs, and whether a rung verdict read
    rung records that other workers had written (trials that passed that rung before it)."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    rows = []
    for t in trials:
        a = t.user_attrs
        worker = (a.get("worker") or {}).get("pid")
        reason = a.get("stop_reason") or a.get("fail_reason") or ""
        state = ("duplicate" if a.get("duplicate_of") is not None else "skipped" if a.get("not_started")
                 else t.state.name.lower())
        stopped_at = None
        if state == "pruned" and "successive halving" in reason:
            stopped_at = reason.split("after ")[1].split(" of training")[0]
        elif state == "pruned" and reason:
            stopped_at = "halfway"
        earlier_other = [o for o in trials if o.number < t.number and o.user_attrs.get("rungs")
                         and (o.user_attrs.get("worker") or {}).get("pid") != worker]
        rung_attrs = a.get("rungs") or {}
        rows.append({
            "number": t.number, "worker": worker, "state": state, "values": a.get("knob_values"),
            "spent_j": float((a.get("spent") or {}).get("energy_j", 0.0)),
            "rungs": {k: v["quality"] for k, v in rung_attrs.items()},
            "rung_judged_on_other_workers": bool(rung_attrs and earlier_other and any(
                "dominated_by" in v for v in rung_attrs.values())),
            "ran": state in ("complete", "pruned") and not a.get("not_started"),
            "stopped_at": stopped_at, "why": reason, "cost_weighing": a.get("cost_weighing")})
    return rows


if __name__ == "__main__":
    main()
