"""The `greenknobs` command. Thin: parse, call the library, print. Expected errors -> one line, exit 2."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from greenknobs.errors import GreenknobsError

EXIT_USAGE = 2


class ConsoleReporter:
    """Progress per trial: phase, energy so far, trials left, ETA."""

    def __init__(self, metric: str):
        self.metric = metric

    def search_started(self, exp, finished: int, planned: int, meter: dict[str, str]) -> None:
        what = f"continuing study {exp.name!r} ({finished} trials so far)" if finished else f"new study {exp.name!r}"
        how = f"auto: {meter['why']}" if meter["requested"] == "auto" else meter["why"]
        print(f"greenknobs: {what}; running {planned} trial(s); meter: {meter['name']} ({how})", flush=True)

    def trial_started(self, number: int, index: int, planned: int, values: dict[str, Any], baseline: bool) -> None:
        label = "baseline (all knobs at their defaults)" if baseline else ", ".join(f"{k}={v}" for k, v in values.items())
        print(f"\n[{index}/{planned}] trial {number}: {label}", flush=True)

    def note(self, number: int, message: str) -> None:
        print(f"    {message}", flush=True)

    def phase_done(self, number: int, phase: str, result, energy_so_far_j: float) -> None:
        m = result.measurement
        spread = f" ±{m.spread_j / 2:.1f}" if m.repeats > 1 else ""
        print(f"    {phase:<9} {m.energy_j:10.1f}{spread} J {m.provenance:<8} {m.time_s:7.1f} s   "
              f"(trial so far {energy_so_far_j:.1f} J)", flush=True)

    def trial_done(self, number: int, summary, failure: str | None, left: int, eta_s: float | None) -> None:
        eta = f", ETA {eta_s / 60:.1f} min" if eta_s is not None and left else ""
        if summary is None:
            print(f"    FAILED: {failure}  [{left} left{eta}]", flush=True)
            return
        flag = "" if summary.feasible else "  (violates a constraint)"
        co2 = summary.carbon_g.get("total")
        co2 = f", {co2:.3f} g CO2e" if co2 is not None else ""
        print(f"    => {summary.energy_j:.1f} J {summary.provenance}{co2} ({summary.energy_saving_pct:+.1f} % saved), "
              f"{self.metric} validation (searched) {summary.quality:.4f} ({summary.quality_retained_pct:.1f} % kept), "
              f"test (held out) {summary.test_quality:.4f}{flag}  [{left} left{eta}]", flush=True)


def _load(args) -> Any:
    from greenknobs.config import load_experiment

    exp = load_experiment(args.experiment)
    if getattr(args, "quick", False):
        exp = exp.quick_variant()
    return exp.with_overrides(trials=getattr(args, "trials", None), storage=getattr(args, "storage", None),
                              mlflow_uri=getattr(args, "mlflow_uri", None))


def cmd_validate(args) -> int:
    exp = _load(args)
    searched = ", ".join(s.name for s in exp.searched_knobs)
    print(f"{args.experiment}: ok — pipeline {exp.pipeline}, {len(exp.searched_knobs)} knobs searched ({searched}), "
          f"{exp.trials} trials, objectives: minimise energy ({exp.objectives.energy_scope}), "
          f"{exp.objectives.quality_direction} {exp.objectives.quality_metric}")
    return 0


def cmd_search(args) -> int:
    from greenknobs.report.tables import render_front
    from greenknobs.search import Search, mask_password, publish
    from greenknobs.tracking import Tracker

    exp = _load(args)
    tracker = Tracker(exp.mlflow_uri, exp.name)
    runner = Search(exp, tracker, ConsoleReporter(exp.objectives.quality_metric))
    try:
        outcome = runner.run()
    except KeyboardInterrupt:
        tracker.end_study("KILLED")
        print("\ninterrupted: finished trials are saved; run the same command again to continue the study",
              file=sys.stderr)
        return 130
    front = publish(exp, outcome.study, tracker)
    tracker.end_study()
    counts = tracker.counts()
    print(f"\nPareto front (feasible, from Optuna) — {len(front.rows)} point(s) of "
          f"{len(front.all_rows)} trials ({outcome.ran} new, {outcome.failed} failed):")
    print(render_front(front.rows))
    print("\nResults:")
    print(f"  Optuna study : {exp.name} in {mask_password(exp.storage)}")
    print(f"  MLflow       : {exp.mlflow_uri} (experiment {exp.name!r}: {counts['parents']} study run, "
          f"{counts['children']} trial runs) — browse with `greenknobs ui {args.experiment}`")
    for key, path in front.files.items():
        print(f"  {key:<13}: {path}")
    return 0


def cmd_pareto(args) -> int:
    from greenknobs.report.tables import render_front
    from greenknobs.search import open_study
    from greenknobs.search.rows import front_rows

    exp = _load(args)
    rows = front_rows(open_study(exp, create=False), exp)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2, default=str))
    else:
        print(render_front(rows))
    return 0


def cmd_meters(args) -> int:
    from greenknobs.meters import meter_table

    rows = meter_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        r["auto"] = "<- auto" if r["auto"] else ""
    print(_table(rows, ["meter", "available", "auto", "measures", "provenance", "resolution_s", "reason"]))
    for r in rows:
        if r["params"]:
            params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
            print(f"\n{r['meter']} parameters (override with meter: {{params: ...}}): {params}")
    print("\nSee docs/meters.md for what each backend measures and where the defaults come from.")
    return 0


def cmd_knobs(args) -> int:
    from greenknobs.knobs import all_knobs

    rows = [k.info() for k in all_knobs()]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(_table(rows, ["name", "phase", "default", "space", "devices", "verifies"]))
    print(f"\n{len(rows)} knobs")
    return 0


def cmd_ui(args) -> int:
    from greenknobs.tracking import ui_command

    uri = args.mlflow_uri or (_load(args).mlflow_uri if args.experiment else None)
    if not uri:
        raise GreenknobsError("give an experiment file or --mlflow-uri")
    cmd, env = ui_command(uri, args.port)
    print(f"MLflow UI on http://127.0.0.1:{args.port} over {uri} (Ctrl-C to stop)", flush=True)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, cells)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="greenknobs", description="Energy-aware knob search for ML pipelines.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="run (or continue) the knob search of an experiment")
    s.add_argument("experiment")
    s.add_argument("--trials", type=int, help="trials to add this run (default: the experiment's budget)")
    s.add_argument("--quick", action="store_true", help="small budget: data subset, few trials (~3 min on 2 cores)")
    s.add_argument("--storage", help="Optuna storage URL (SQLAlchemy), e.g. postgresql://user@host/db")
    s.add_argument("--mlflow-uri", help="MLflow tracking URI")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("pareto", help="print the Pareto front of an experiment's study")
    s.add_argument("experiment")
    s.add_argument("--json", action="store_true")
    s.add_argument("--quick", action="store_true", help="the --quick study of the experiment")
    s.add_argument("--storage")
    s.set_defaults(func=cmd_pareto)

    s = sub.add_parser("validate", help="check an experiment file")
    s.add_argument("experiment")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("meters", help="energy meters: available here, what they measure, why not")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_meters)

    s = sub.add_parser("knobs", help="every registered knob")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_knobs)

    s = sub.add_parser("ui", help="MLflow UI on 127.0.0.1 over an experiment's store")
    s.add_argument("experiment", nargs="?")
    s.add_argument("--mlflow-uri")
    s.add_argument("--port", type=int, default=5000)
    s.add_argument("--quick", action="store_true")
    s.set_defaults(func=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "search" and args.trials is not None and args.trials < 1:
        print("greenknobs: error: --trials: must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except GreenknobsError as exc:
        print(f"greenknobs: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
