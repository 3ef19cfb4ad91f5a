"""The default search on two revisions of greenknobs, side by side: did rebuilding the text
pipeline on the define-by-run trial API move its front beyond the noise floor?

    python benchmarks/default_front.py --old b1cf70b [--quick] [--trials N]
    python benchmarks/default_front.py --old none --out benchmarks/results/default_search.json   # this checkout only

Each revision runs `greenknobs search experiments/bbc-news-minilm.yaml` in a fresh folder, one after
the other, alone (the old one from a temporary `git worktree`, the new one from this checkout), and
its front (`greenknobs pareto --json`) and cost are written to benchmarks/results/default_front.json
with the command, commit, date, machine and meter. Energy here is whatever the meter gives: on a
machine without RAPL or a GPU, *modelled* by the cpu-model (labelled so). Then a table prints both
fronts, the best held-out-feasible saving of each (>= 97 % of its baseline's test quality) and the
baseline's energy.

What changed between the two by design: the rebuilt pipeline scores the test split in a held-out
window outside the objective (the old one served validation + test inside the inference phase), so
its objective counts half the serving energy; savings are compared, not absolute joules.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "experiments/bbc-news-minilm.yaml"


def run_revision(label: str, code_root: Path, work: Path, args) -> dict:
    # the same OpenMP wait policy for both (the newer code sets PASSIVE itself; the older did not): the
    # comparison is then of the code, not of how its threads wait
    env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_WAIT_POLICY": "PASSIVE"}
    extra = ["--quick"] if args.quick else []
    if args.trials:
        extra += ["--trials", str(args.trials)]
    cmd = [sys.executable, "-m", "greenknobs", "search", str(code_root / EXPERIMENT), *extra]
    started = time.time()
    search = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if search.returncode != 0:
        raise SystemExit(f"{label}: search failed\n{search.stdout[-3000:]}\n{search.stderr[-3000:]}")
    wall = time.time() - started
    pareto = subprocess.run([sys.executable, "-m", "greenknobs", "pareto", str(code_root / EXPERIMENT), *extra[:1], "--json"],
                            cwd=work, env=env, capture_output=True, text=True, check=True)
    summary = [line for line in search.stdout.splitlines() if line.startswith(("What the search cost", "Pareto front"))]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code_root, capture_output=True, text=True).stdout.strip()
    return {"label": label, "commit": commit, "command": " ".join(cmd[1:]), "wall_s": round(wall, 1),
            "front": json.loads(pareto.stdout), "summary": summary}


def best_saving(front: list[dict]) -> dict | None:
    kept = [r for r in front if (r.get("test_quality_retained_pct") or 0) >= 97.0]
    return max(kept, key=lambda r: r.get("energy_saving_pct") or 0, default=None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default="b1cf70b", help="the revision before the rebuild (none: this checkout only)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "default_front.json"))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        arms = [("after (define-by-run trial)", ROOT)]
        if args.old != "none":
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old_tree), args.old], cwd=ROOT, check=True)
            arms.insert(0, ("before (five-phase pipeline)", old_tree))
        else:
            arms = [("this checkout", ROOT)]
        try:
            for label, root in arms:
                work = Path(tmp) / label.split()[0]
                work.mkdir()
                print(f"running {label} ...", flush=True)
                results.append(run_revision(label, root, work, args))
        finally:
            if args.old != "none":
                subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, check=False)
    record = {"benchmark": "default_front", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
                          "python": platform.python_version()},
              "experiment": EXPERIMENT, "quick": args.quick, "runs": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2, default=str))
    for run in results:
        print(f"\n{run['label']} ({run['commit']}, {run['wall_s'] / 60:.1f} min): " + " | ".join(run["summary"]))
        print(f"{'trial':>6} {'J':>9} {'saved %':>8} {'val':>7} {'test':>7} {'test kept %':>12} provenance")
        for r in sorted(run["front"], key=lambda r: r["energy_j"]):
            print(f"{r['trial']:>6} {r['energy_j']:>9.1f} {r['energy_saving_pct']:>8.1f} {r['validation_quality']:>7.4f} "
                  f"{r['test_quality']:>7.4f} {r['test_quality_retained_pct']:>12.1f} {r['provenance']}")
        best = best_saving(run["front"])
        if best:
            print(f"  best held-out-feasible saving: {best['energy_saving_pct']:.1f} % (trial {best['trial']}, "
                  f"test kept {best['test_quality_retained_pct']:.1f} %)")
    print(f"\nrecorded in {args.out}")


if __name__ == "__main__":
    main()
