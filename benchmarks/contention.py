"""Does a neighbour's load move one trial's modelled joules? The same small trial (the experiment's
baseline on a stratified subset) alone and beside a CPU hog, with OpenMP's wait policy as it was
before greenknobs set it (the runtime default: threads spin a while before they sleep), ACTIVE
(they spin) and PASSIVE (they sleep at once: what greenknobs now sets), several repeats of each
arm in a seeded, interleaved order, every run in a fresh process (the policy is read when torch
loads). Prints per arm the modelled joules (total and training), the wall time, the spread, how
many phases were marked contended, and the noise floor of the runs alone.

    python benchmarks/contention.py experiments/bbc-news-minilm.yaml [--repeats 4] [--max-examples 300]
           [--hogs 2] [--policies default,ACTIVE,PASSIVE] [--conditions alone,hog] [--json out.json]

The hog is ``--hogs`` busy-loop processes started before a run and killed right after it (and on
any exit of this script); they are this script's children, not the trial's, so the trial's own
CPU time is what the cpu-model counts -- as with an unrelated job on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(experiment: str, max_examples: int, policy: str) -> None:
    """One trial in this fresh process; prints one JSON line."""
    if policy == "default":
        import torch  # noqa: F401  -- loaded before greenknobs: the OpenMP runtime keeps its default wait policy
    from greenknobs.config import load_experiment
    from greenknobs.meters import create_meter
    from greenknobs.pipeline import pipeline_class, run_trial
    from greenknobs.runtime import detect_runtime, process_state

    exp = load_experiment(experiment)
    options = {**exp.pipeline_options, "max_examples": max_examples}
    pipeline = pipeline_class(exp.pipeline)(pipeline_class(exp.pipeline).validate_options(options))
    meter = create_meter(exp.meter.name if exp.meter.name != "auto" else "cpu-model", exp.meter.params)
    start = time.perf_counter()
    try:
        result = run_trial(pipeline, [(s.knob, s.default) for s in exp.knobs], meter, detect_runtime("cpu"), exp.seed)
    finally:
        meter.close()
    phases = {}
    for name, p in result.phases.items():
        facts = p.details.get("measurement", {})
        loads = facts.get("host_load") if isinstance(facts.get("host_load"), list) else []
        phases[name] = {"energy_j": p.energy_j, "time_s": p.time_s, "contended": bool(facts.get("contended")),
                        "others_cores": max((x["others_cores"] for x in loads), default=None),
                        "cpu_s": p.measurement.components.get("cpu", {}).get("cpu_s")}
    print(json.dumps({"energy_j": result.energy_j, "provenance": result.provenance, "meter": result.meter,
                      "time_s": result.time_s, "wall_s": time.perf_counter() - start, "phases": phases,
                      "omp_wait_policy": process_state().get("omp_wait_policy"),
                      "validation": result.quality["validation"]}))


class Hogs:
    """Busy loops on the machine, always stopped: with-block exit, SIGTERM/SIGINT, or this script's end."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self) -> Hogs:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
                      for _ in range(self.n)]
        time.sleep(0.5)  # let them reach full speed before the trial starts
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs = []


def run_arm(args, policy: str, condition: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, __file__, args.experiment, "--child", policy, "--max-examples", str(args.max_examples)]
    load0 = os.getloadavg()[0]

    def go() -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)

    if condition == "hog":
        with Hogs(args.hogs):
            out = go()
    else:
        out = go()
    if out.returncode != 0:
        raise SystemExit(f"run failed ({policy}, {condition}):\n{out.stderr[-3000:]}")
    run = json.loads(out.stdout.strip().splitlines()[-1])
    run.update(policy=policy, condition=condition, loadavg_before=load0)
    return run


def spread(xs: list[float]) -> str:
    if len(xs) < 2:
        return "–"
    return f"±{(max(xs) - min(xs)) / 2:.1f} ({100 * (max(xs) - min(xs)) / 2 / statistics.mean(xs):.1f} %)"


def summarise(runs: list[dict[str, Any]], policies: list[str], conditions: list[str]) -> None:
    print("\n| wait policy | condition | runs | total J (mean) | half-range | training J | training half-range "
          "| wall s | phases contended | policy in effect |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    floors = {}
    for policy in policies:
        for condition in conditions:
            arm = [r for r in runs if r["policy"] == policy and r["condition"] == condition]
            if not arm:
                continue
            e = [r["energy_j"] for r in arm]
            t = [r["phases"]["training"]["energy_j"] for r in arm]
            w = [r["time_s"] for r in arm]
            contended = sum(p["contended"] for r in arm for p in r["phases"].values())
            if condition == "alone":
                floors[policy] = (max(e) - min(e)) / 2 / statistics.mean(e) if len(e) > 1 else None
            print(f"| {policy} | {condition} | {len(arm)} | {statistics.mean(e):.1f} | {spread(e)} | "
                  f"{statistics.mean(t):.1f} | {spread(t)} | {statistics.mean(w):.1f} | "
                  f"{contended} of {5 * len(arm)} | {arm[0]['omp_wait_policy']} |")
    print()
    for policy in policies:
        alone = [r["energy_j"] for r in runs if r["policy"] == policy and r["condition"] == "alone"]
        hog = [r["energy_j"] for r in runs if r["policy"] == policy and r["condition"] == "hog"]
        if alone and hog:
            shift = 100 * (statistics.mean(hog) / statistics.mean(alone) - 1)
            floor = floors.get(policy)
            verdict = ("within" if floor is not None and abs(shift) <= 100 * floor else "beyond") + " the noise floor"
            print(f"{policy}: beside the hog {shift:+.1f} % modelled J vs alone; noise floor (half-range of the runs "
                  f"alone) ±{100 * floor:.1f} % -> {verdict}" if floor is not None else
                  f"{policy}: beside the hog {shift:+.1f} % (one run alone: no noise floor)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--max-examples", type=int, default=300)
    ap.add_argument("--hogs", type=int, default=2)
    ap.add_argument("--policies", default="default,ACTIVE,PASSIVE")
    ap.add_argument("--conditions", default="alone,hog")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write every run here")
    args = ap.parse_args()
    if args.child:
        child(args.experiment, args.max_examples, args.child)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the hogs' with-block still exits
    policies, conditions = args.policies.split(","), args.conditions.split(",")
    arms = [(p, c) for p in policies for c in conditions]
    order = []
    rng = random.Random(args.seed)
    for _ in range(args.repeats):  # rounds: every arm once per round, in a seeded random order
        block = list(arms)
        rng.shuffle(block)
        order += block
    print(f"{len(order)} runs: {len(arms)} arms x {args.repeats} repeats, interleaved; {os.cpu_count()} CPUs; "
          f"load average before {os.getloadavg()}", flush=True)
    runs = []
    for i, (policy, condition) in enumerate(order, 1):
        r = run_arm(args, policy, condition)
        runs.append(r)
        print(f"[{i}/{len(order)}] {policy:<8} {condition:<6} {r['energy_j']:8.1f} J {r['provenance']} "
              f"(training {r['phases']['training']['energy_j']:.1f} J, {r['phases']['training']['cpu_s']:.1f} CPU-s), "
              f"{r['time_s']:.1f} s, contended: {[n for n, p in r['phases'].items() if p['contended']] or 'none'}, "
              f"load avg before {r['loadavg_before']:.2f}", flush=True)
    summarise(runs, policies, conditions)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
