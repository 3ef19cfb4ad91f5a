"""The `greenknobs` command. Thin: parse, call the library, print. Expected errors -> one line, exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from greenknobs.errors import GreenknobsError, ServiceOutage
from greenknobs.processes import termination_as_interrupt

EXIT_USAGE = 2
EXIT_TEMPFAIL = 75  # sysexits' EX_TEMPFAIL: a service stayed away longer than we wait; restarting the worker is right


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
        if result.details.get("aborted"):
            print(f"    {phase:<9} {m.energy_j:10.1f} J {m.provenance:<8} {m.time_s:7.1f} s   (cut short; counted in the "
                  f"search's cost)", flush=True)
            return
        spread = f" ±{m.spread_j / 2:.1f}" if m.repeats > 1 else ""
        facts = result.details.get("measurement") or {}
        contended = f"; {facts['contention']}" if facts.get("contention") else ""
        print(f"    {phase:<9} {m.energy_j:10.1f}{spread} J {m.provenance:<8} {m.time_s:7.1f} s   "
              f"(trial so far {energy_so_far_j:.1f} J{contended})", flush=True)

    def trial_done(self, number: int, summary, failure: str | None, left: int, eta_s: float | None,
                   stopped: bool = False, infeasible: bool = False) -> None:
        eta = f", ETA {eta_s / 60:.1f} min" if eta_s is not None and left else ""
        if summary is None:  # a stop on purpose (hopeless) or a refused combination is not a failure: say which
            how = "STOPPED early" if stopped else "INFEASIBLE, not started" if infeasible else "FAILED"
            print(f"    {how}: {failure}  [{left} left{eta}]", flush=True)
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
                              mlflow_uri=getattr(args, "mlflow_uri", None),
                              accept_changes=getattr(args, "accept_changes", None) or None,
                              warm_start=getattr(args, "warm_start", None))


def cmd_validate(args) -> int:
    from greenknobs.config import check_inputs

    exp = _load(args)
    data = check_inputs(exp)  # the dataset, read and split as trial 0 will: a bad file fails here
    if exp.quick.get("pipeline"):
        try:
            check_inputs(exp.quick_variant())
        except GreenknobsError as exc:
            raise GreenknobsError(f"with --quick (quick.pipeline: {exp.quick['pipeline']}): {exc}") from None
    searched = ", ".join(s.name for s in exp.searched_knobs)
    print(f"{args.experiment}: ok — pipeline {exp.pipeline}, {len(exp.searched_knobs)} knobs searched ({searched}), "
          f"{exp.trials} trials" + (f" or {exp.energy_budget_j:,.0f} J spent" if exp.energy_budget_j else "")
          + f", objectives: minimise energy ({exp.objectives.energy_scope}), "
          f"{exp.objectives.quality_direction} {exp.objectives.quality_metric}")
    if data.get("rows"):
        cap = exp.pipeline_options.get("max_examples")
        near_dropped = f", {data['near_duplicates_dropped']} near-duplicates" if data.get("near_duplicates_dropped") else ""
        print(f"  data: {data['rows']} examples in {data['labels']} labels ({data.get('duplicates_dropped', 0)} exact "
              f"duplicates{near_dropped} dropped{f', capped by max_examples={cap}' if cap else ''}); the seeded "
              f"stratified split works")
    for line in _data_warnings(data):
        print(f"  {line}")
    if not exp.searched_knobs:
        print("  nothing to search (no knob has a space): the study runs the baseline only")
    if getattr(args, "smoke", False):
        return _smoke(exp)
    if exp.pipeline == "function":
        print("  your code's safeguards (trivial guard, hopeless-trial stops) and knobs show in a smoke run: "
              f"greenknobs validate {args.experiment} --smoke")
    return 0


def _smoke(exp) -> int:
    from greenknobs.search.smoke import smoke

    print("smoke run: the baseline, then each searched knob at the far end of its space -- a few batches and steps "
          "each, nothing stored")

    def show(run) -> None:
        verdict = "ok" if run.outcome == "ok" else run.outcome
        energy = f"{run.energy_j:8.1f} J {run.provenance:<8}" if run.outcome == "ok" else " " * 19
        print(f"  {run.label:<42} {energy} {run.seconds:6.1f} s  {verdict}", flush=True)
        for name, line in run.evidence.items():
            print(f"      {name}: {line}", flush=True)

    runs = smoke(exp, show)
    phases = next((r.phases for r in runs if r.outcome == "ok"), [])
    print(f"  phases measured: {', '.join(phases) or 'none'}")
    for name, state in next((r.safeguards for r in runs if r.safeguards), {}).items():
        print(f"  safeguard {name.replace('_', ' ')}: {state}")
    failed = [r for r in runs if not r.ok]
    if failed:
        print(f"smoke: {len(failed)} of {len(runs)} runs failed -- a search would record them as failed trials")
        return 1
    print(f"smoke: ok ({len(runs)} runs)")
    return 0


def _data_warnings(data: dict[str, Any]) -> list[str]:
    """What ``validate`` says about the split: near-duplicates left across it (by split pair) and
    duplicate texts whose labels disagree."""
    from greenknobs.ml.data import describe_near_duplicates

    lines = []
    near = data.get("near_duplicates")
    if near:
        advice = ("; `pipeline.dedup: near` drops them before splitting" if near["pairs"] and data.get("dedup") != "near"
                  else "")
        lines.append(f"near-duplicates: {describe_near_duplicates(near)}{advice}")
    conflicts = data.get("label_conflicts") or {}
    if conflicts.get("texts"):
        first = conflicts["first"][0]
        lines.append(f"label conflicts: {conflicts['texts']} texts appear with different labels ({conflicts['rows']} rows); "
                     f"the first copy's label is kept, e.g. {first['text'][:40]!r}: {first['labels']} -> kept "
                     f"{first['kept_label']!r}")
    return lines


def cmd_search(args) -> int:
    from greenknobs.report.tables import render_front
    from greenknobs.search import Search, mask_password, publish
    from greenknobs.tracking import Tracker

    exp = _load(args)
    tracker = Tracker(exp.mlflow_uri, exp.name)
    runner = Search(exp, tracker, ConsoleReporter(exp.objectives.quality_metric), heartbeat_s=args.heartbeat_s,
                    grace_s=args.grace_s, gpu=args.gpu, db_retry_s=args.db_retry_s)
    try:
        with termination_as_interrupt():
            outcome = runner.run()
    except KeyboardInterrupt:
        tracker.end_study("KILLED")
        print("\ninterrupted: finished trials are saved; run the same command again to continue the study",
              file=sys.stderr)
        return 130
    front = publish(exp, outcome.study, tracker)
    tracker.end_study()
    caught_up = runner.settle_logging()  # logging deferred by an MLflow outage: replayed, or kept for later
    print(f"\nPareto front (feasible, from Optuna) — {len(front.rows)} point(s) of "
          f"{len(front.all_rows)} trials ({outcome.ran} new, {outcome.failed} failed; stopped by the "
          f"{outcome.stopped_by}):")
    print(render_front(front.rows))
    print("\nResults:")
    print(f"  Optuna study : {exp.name} in {mask_password(exp.storage)}")
    if caught_up:
        counts = tracker.counts()
        print(f"  MLflow       : {exp.mlflow_uri} (experiment {exp.name!r}: {counts['parents']} study run, "
              f"{counts['children']} trial runs) — browse with `greenknobs ui {args.experiment}`")
    else:
        print(f"  MLflow       : {exp.mlflow_uri} is unreachable: {tracker.pending} log records kept in "
              f"{tracker.spool_dir}, replayed by the next greenknobs command here that opens it")
    for key, path in front.files.items():
        print(f"  {key:<13}: {path}")
    from greenknobs.search import energy_model
    from greenknobs.search import study as studies

    model = energy_model.fit(exp, studies.energy_observations(outcome.study))
    if model is not None:  # what the budget promise and successive halving predicted energy with
        print(f"  energy model : {model.describe()}")
    store = runner.store
    if store is not None:  # bounded (reuse.max_gb; least recently used entries go first)
        state = f"off: {store.disabled}" if store.disabled else (f"{store.size_bytes() / 1e6:,.0f} MB of "
                                                                  f"{store.max_bytes / 1e9:g} GB")
        print(f"  phase store  : {store.root} ({state})")
    _print_cost(front.cost)
    _print_outages([o for o in outcome.outages if "records" not in o] + tracker.outages())  # MLflow's: as of now
    print(f"\nNext: `greenknobs ablate {args.experiment}` (each knob alone, with repeats) and "
          f"`greenknobs report {args.experiment}` (the sustainability report).")
    return 0


def _print_cost(pb) -> None:
    print(f"\nWhat the search cost: {pb.search_spent_j:,.0f} J over {pb.trials} trials ({pb.outcomes()}), "
          f"plus {pb.isolation_spent_j:,.0f} J of isolation study ({pb.provenance})")
    if pb.per_recommendation:
        d = pb.deployment
        print(f"  payback for {d['retrains_per_month']:g} retrainings and {d['predictions_per_month']:,.0f} predictions "
              f"a month ({d['stated']}); a saving inside the noise floor counts as none ({pb.noise['source']})")
    for p in pb.per_recommendation:
        print(f"  {p['kind']} (trial {p['trial']}): {p['training_verdict']}, {p['prediction_verdict']}; {p['verdict']}")


def _print_outages(outages: list[dict[str, Any]]) -> None:
    """What this worker rode out, one line each (benchmarks/outages.py reads these lines)."""
    if not outages:
        return
    print("\nOutages ridden out by this worker:")
    for o in outages:
        began = time.strftime("%H:%M:%S", time.localtime(o["began"]))
        if "records" in o:  # the tracking server: logging deferred, then replayed
            state = (f"caught up at {time.strftime('%H:%M:%S', time.localtime(o['ended']))}" if o.get("ended")
                     else "not caught up yet")
            print(f"  {o['service']}: logging deferred at {began} for {o['seconds']:.1f} s, {o['records']} records "
                  f"kept, {o['replayed']} replayed; {state} ({o['cause']})")
        else:
            print(f"  {o['service']}: unreachable at {began} for {o['seconds']:.1f} s ({o['retries']} retries; "
                  f"{o['cause']})")


def cmd_ablate(args) -> int:
    from greenknobs.report.analysis import knob_effects
    from greenknobs.search.ablation import isolation_experiment, parse_combo, run_isolation
    from greenknobs.search.report import baseline_facts
    from greenknobs.search.rows import all_rows
    from greenknobs.tracking import Tracker

    exp = _load(args)
    if args.repeats < 1:
        raise GreenknobsError("--repeats: must be >= 1")
    combos = [parse_combo(c, exp) for c in args.combo or []]
    tracker = Tracker(exp.mlflow_uri, exp.name)
    try:
        with termination_as_interrupt():
            outcome, notes = run_isolation(exp, tracker, ConsoleReporter(exp.objectives.quality_metric), args.repeats,
                                           combos)
    except KeyboardInterrupt:
        tracker.end_study("KILLED")
        print("\ninterrupted: finished runs are saved; run the same command again to continue", file=sys.stderr)
        return 130
    tracker.end_study()
    for note in notes:
        print(f"  {note}")
    iso = isolation_experiment(exp)
    validation_size, _ = baseline_facts(outcome.study)  # one example's worth of F1 is the quality resolution
    effects, floor = knob_effects(all_rows(outcome.study, iso), exp.objectives.quality_direction == "maximize",
                                  validation_size)
    print(f"\nIsolation study {iso.name!r}: {outcome.ran} runs this time. {floor.describe() if floor else ''}")
    print(f"{'knob value (alone)':<40}{'runs':>5}{'saved %':>10}{'95 % CI':>18}{'Δ quality':>11}  against the noise floor")
    for x in effects:
        ci = f"[{x.saving_ci_pct[0]:.1f}, {x.saving_ci_pct[1]:.1f}]" if x.saving_ci_pct else "–"
        print(f"{x.label:<40}{x.runs:>5}{x.saving_pct:>10.1f}{ci:>18}{x.quality_delta:>+11.4f}  energy "
              f"{x.energy_verdict}; quality {x.quality_verdict}")
    print(f"\nNext: `greenknobs report {args.experiment}` puts these beside the search (cascade, payback).")
    return 0


def cmd_report(args) -> int:
    from greenknobs.search.report import write_report
    from greenknobs.tracking import Tracker

    exp = _load(args)
    report, files = write_report(exp, Tracker(exp.mlflow_uri, exp.name))
    for rec in report.recommendations:
        print(f"{rec.kind}: trial {rec.trial}, {rec.saving_pct:.1f} % less energy, {exp.objectives.quality_metric} "
              f"test (held out) {rec.test_quality:.4f}")
    _print_cost(report.payback)
    if not report.effects:
        print(f"\n(no isolation study: `greenknobs ablate {args.experiment}` adds knob effects and the cascade)")
    print("\nReport files (also on the study's MLflow run, under report/):")
    for key, path in files.items():
        print(f"  {key:<10}: {path}")
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
    print(_table(rows, ["name", "phase", "default", "space", "devices", "acts_on", "verifies"]))
    print(f"\n{len(rows)} knobs")
    return 0


def cmd_ui(args) -> int:
    from greenknobs.processes import port_open, serve
    from greenknobs.tracking import Tracker, ui_command

    exp = _load(args) if args.experiment else None
    uri = args.mlflow_uri or (exp.mlflow_uri if exp else None)
    if not uri:
        raise GreenknobsError("give an experiment file or --mlflow-uri")
    if port_open(args.host, args.port):
        raise GreenknobsError(f"port {args.port} on {args.host} is taken: choose another with --port")
    base = f"http://{args.host}:{args.port}"
    # MLflow 3 opens on its GenAI overview unless the URL asks for the classic runs view
    url = Tracker(uri, exp.name).experiment_url(base) if exp else f"{base}/#/experiments?workflowType=machine_learning"
    cmd, env = ui_command(uri, args.port, args.host)

    def ready() -> None:
        print(f"MLflow UI over {uri}\n  open: {url}\n  (Ctrl-C stops it)", flush=True)

    try:
        return serve(cmd, env, args.host, args.port, ready)
    except KeyboardInterrupt:
        return 0
    except TimeoutError as exc:
        raise GreenknobsError(str(exc)) from None


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
    s.add_argument("--trials", type=int, help="the study's total number of trials, shared by every worker "
                                              "(default: the experiment's budget); a rerun continues up to it")
    s.add_argument("--quick", action="store_true", help="small budget: data subset, few trials (~3 min on 2 cores)")
    s.add_argument("--storage", help="Optuna storage URL (SQLAlchemy), e.g. postgresql://user@host/db")
    s.add_argument("--mlflow-uri", help="MLflow tracking URI")
    s.add_argument("--heartbeat-s", type=float, default=30.0,
                   help="seconds between a running trial's heartbeats (default 30)")
    s.add_argument("--gpu", help="bind this worker to one GPU, by NVML index or UUID (GPU-...): exclusive for its "
                                 "lifetime, the only device CUDA sees; trials fail if another process uses it")
    s.add_argument("--grace-s", type=float, default=300.0,
                   help="a trial silent this long is taken for dead, failed and re-queued (default 300)")
    s.add_argument("--db-retry-s", type=float, default=120.0,
                   help="how long a database outage (a restart, a fail-over) is waited out before this worker stops "
                        "with exit code 75; a restarted worker carries on from the study (default 120)")
    s.add_argument("--accept-changes", action="store_true",
                   help="continue a study although its data, code or libraries changed since it started (recorded on "
                        "the study; stored phase outputs are dropped)")
    s.add_argument("--warm-start", action="append", metavar="STUDY",
                   help="learn from an earlier study of this pipeline on this machine: quick (its --quick study), "
                        "isolation, or a study name in the same storage; repeatable (overrides warm_start:)")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("pareto", help="print the Pareto front of an experiment's study")
    s.add_argument("experiment")
    s.add_argument("--json", action="store_true")
    s.add_argument("--quick", action="store_true", help="the --quick study of the experiment")
    s.add_argument("--storage")
    s.set_defaults(func=cmd_pareto)

    s = sub.add_parser("ablate", help="isolation study: the baseline and each searched knob value alone, repeated")
    s.add_argument("experiment")
    s.add_argument("--repeats", type=int, default=3, help="runs of each configuration (the baseline's set the noise floor)")
    s.add_argument("--combo", action="append", metavar="K=V,K=V",
                   help="also run this combination of searched knobs (repeatable), e.g. the seed study's hand pick")
    s.add_argument("--quick", action="store_true")
    s.add_argument("--storage")
    s.add_argument("--mlflow-uri")
    s.set_defaults(func=cmd_ablate)

    s = sub.add_parser("report", help="the sustainability report (HTML, Markdown, JSON, model-card CO2 block)")
    s.add_argument("experiment")
    s.add_argument("--quick", action="store_true")
    s.add_argument("--storage")
    s.add_argument("--mlflow-uri")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("validate", help="check an experiment file (--smoke: run the code a few steps, every knob once)")
    s.add_argument("--smoke", action="store_true",
                   help="run the baseline and each searched knob for a few batches: every phase and knob hook, no energy "
                        "spent on a search, nothing stored")
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
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    s.add_argument("--quick", action="store_true")
    s.set_defaults(func=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "search" and args.trials is not None and args.trials < 1:
        print("greenknobs: error: --trials: must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "search" and not args.db_retry_s >= 0:
        print("greenknobs: error: --db-retry-s: must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except ServiceOutage as exc:  # a service stayed away longer than we wait: one line, restartable
        print(f"greenknobs: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_TEMPFAIL
    except GreenknobsError as exc:  # bad input, an unusable backend: one line naming the key or URL
        print(f"greenknobs: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("greenknobs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `greenknobs pareto --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return 141
    except Exception as exc:  # a bug, not bad input: one line here, the traceback in a file (or shown on request)
        if os.environ.get("GREENKNOBS_DEBUG"):
            raise
        import tempfile
        import traceback

        with tempfile.NamedTemporaryFile("w", prefix="greenknobs-traceback-", suffix=".txt", delete=False) as fh:
            traceback.print_exc(file=fh)
        print(f"greenknobs: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]} -- a bug in "
              f"greenknobs, not in your input; traceback in {fh.name} (GREENKNOBS_DEBUG=1 prints it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
