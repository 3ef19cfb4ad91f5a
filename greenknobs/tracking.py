"""MLflow logging: one parent run per study, one nested run per trial. The only module importing mlflow.

Uses ``MlflowClient`` with explicit run ids rather than the fluent active-run stack, so a
failed or interrupted trial can never leave the wrong run "active".

MLflow is a record; the Optuna study is the source of truth. When the tracking server becomes
unreachable in the middle of a search, the search does not stop: every MLflow call from then on
is kept, in order, on local disk (spool.py, under ``runs/<name>/mlflow-spool/``) and a background
thread replays the records once the server answers again -- runs created, params, metrics, tags,
artifacts, the parent run's front and report -- so MLflow ends with one run per trial and none
left RUNNING. A run created meanwhile has a placeholder id (``gk-...``) until then; every run also
carries its creation key as a tag, so a creation whose answer was lost is not made twice. Only an
unreachable server *at start* is an error (bad input: one line).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# the console reporter prints its own lines; MLflow's "View run" print costs a get_run per closed run
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# an unreachable tracking server is one clear error within seconds, not minutes of retries
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

import logging

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from greenknobs.errors import GreenknobsError
from greenknobs.phases import TrialResult
from greenknobs.records import TrialRow, TrialSummary
from greenknobs.spool import Spool
from greenknobs.urls import mask_password, normalise_db_url

# Schema creation/migration chatter on every new store is noise for our users.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

STUDY_TAG = "greenknobs.study"
ROLE_TAG = "greenknobs.role"
RUN_KEY_TAG = "greenknobs.run_key"  # a run's creation key: a replayed creation finds a run that was made already
PLACEHOLDER = "gk-"  # the id of a run created while the server was unreachable, until it is replayed
SERVICE = "the MLflow tracking server"
MAX_REFUSALS = 3  # a replayed record the (reachable) server refuses this often is dropped, with a note


def unreachable(exc: BaseException) -> bool:
    """The tracking server (or its backend store) did not answer -- refused, reset, timed out, a
    5xx -- as opposed to refusing a request (4xx): worth keeping the call and trying it again."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MlflowException):
            text = str(current)
            if "API request to" in text and "failed with exception" in text:  # MLflow's retries ran out
                return True
            with contextlib.suppress(Exception):
                if current.get_http_status_code() >= 500 and current.error_code != "INVALID_PARAMETER_VALUE":
                    return True
        elif type(current).__module__.split(".")[0] in ("requests", "urllib3"):  # artifact uploads
            response = getattr(current, "response", None)
            return response is None or getattr(response, "status_code", 500) >= 500
        elif isinstance(current, (ConnectionError, TimeoutError)):
            return True
        current = current.__cause__ or current.__context__
    return False


def _first_line(exc: BaseException) -> str:
    """What went wrong in a few words: MLflow's own message repeats the URL and urllib3's retry log."""
    text = " ".join(str(exc).split())
    for words, short_form in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                              ("RemoteDisconnected", "connection closed by the server"),
                              ("Connection reset", "connection reset")):
        if words in text:
            return short_form
    if (m := re.search(r"too many (\d{3}) error responses", text)) is not None:
        return f"HTTP {m.group(1)} responses"
    return mask_password(text[:160]) if text else type(exc).__name__


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def artifact_root_for(tracking_uri: str) -> str | None:
    """Keep artifacts beside a local SQLite store (runs/<name>/mlartifacts), not in the cwd."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):]).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


class Tracker:
    def __init__(self, tracking_uri: str, experiment_name: str, spool_dir: str | Path | None = None):
        tracking_uri = normalise_db_url(tracking_uri, "mlflow_uri")
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        try:
            self.experiment_id = self._experiment(experiment_name)
        except Exception as exc:  # unreachable server, bad URI, migration failure
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GreenknobsError(f"cannot open MLflow store {mask_password(tracking_uri)}: {mask_password(first)}") from None
        self.parent_id: str | None = None
        self._run_names: dict[str, str] = {}  # trial runs this process opened -> their first name
        # -- riding out an unreachable server (see the module's docstring)
        self.spool_dir = Path(spool_dir or Path("runs") / experiment_name / "mlflow-spool").resolve()
        self.listeners: list[Callable[[str], None]] = []  # one-line notes: logging deferred, caught up
        self.deferrals: list[dict[str, Any]] = []  # {"began", "ended", "records", "replayed", "cause"}
        self.adopted = 0  # records left by an earlier process on this host, replayed at start
        self._lock = threading.RLock()
        self._ids: dict[str, str] = {}  # placeholder -> the run id it became
        self._spool: Spool | None = None
        self._deferred = False
        self._refusals: dict[int, int] = {}
        self._catching_up: threading.Thread | None = None
        self._closing = threading.Event()
        self._adopt_orphans()

    def _experiment(self, name: str) -> str:
        """The experiment's id, creating it if needed; workers starting together may race to create
        it (MLflow answers RESOURCE_ALREADY_EXISTS to all but one): the losers read the winner's."""
        for _ in range(3):
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            try:
                return self.client.create_experiment(name, artifact_location=artifact_root_for(self.uri))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        raise GreenknobsError(f"MLflow experiment {name!r} could not be created or found in {mask_password(self.uri)}")

    # -- study ---------------------------------------------------------------------------------
    def find_parent(self, study_name: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'study' and tags.`{STUDY_TAG}` = '{study_name}'",
            max_results=1)
        return runs[0].info.run_id if runs else None

    def start_study(self, exp, study_name: str, carbon: dict[str, Any] | None = None,
                    idle_power: dict[str, Any] | None = None, meter: dict[str, Any] | None = None,
                    parent_id: str | None = None) -> str:
        """The study's parent run: the one whose id the study keeps (any worker, any process), else
        the one tagged with the study's name, else a new one. Called under the study lock, before
        the first trial: an unreachable server here is one line, not a deferral."""
        try:
            return self._start_study(exp, study_name, carbon, idle_power, meter, parent_id)
        except Exception as exc:
            if not unreachable(exc):
                raise
            raise GreenknobsError(f"mlflow_uri: cannot reach {mask_password(self.uri)}: {_first_line(exc)}") from None

    def _start_study(self, exp, study_name: str, carbon: dict[str, Any] | None, idle_power: dict[str, Any] | None,
                     meter: dict[str, Any] | None, parent_id: str | None) -> str:
        self.parent_id = parent_id if parent_id and self._exists(parent_id) else self.find_parent(study_name)
        if self.parent_id is None:
            run = self.client.create_run(self.experiment_id, run_name=study_name,
                                         tags={ROLE_TAG: "study", STUDY_TAG: study_name})
            self.parent_id = run.info.run_id
            params = {"pipeline": exp.pipeline, "sampler": exp.sampler, "seed": exp.seed,
                      "objective.energy_scope": exp.objectives.energy_scope,
                      "objective.quality": f"{exp.objectives.quality_direction} {exp.objectives.quality_metric}",
                      "constraint.min_quality_retained": exp.constraints.min_quality_retained,
                      "constraint.beat_trivial_by": exp.constraints.beat_trivial_by,
                      "meter": (meter or {}).get("name", exp.meter.name), "meter.requested": exp.meter.name,
                      "meter.why": (meter or {}).get("why", ""), "carbon.country_iso_code": exp.carbon.country_iso_code,
                      "carbon.pue": exp.carbon.pue}
            if carbon:
                params.update({"carbon.g_per_kwh": round(carbon["g_per_kwh"], 2), "carbon.source": carbon["source"]})
            for s in exp.knobs:
                params[f"space.{s.name}"] = s.space.describe() if s.space else f"fixed {s.default!r}"
                params[f"baseline.{s.name}"] = s.default
            flat: dict[str, Any] = {}
            _flatten("pipeline", exp.pipeline_options, flat)
            params.update(flat)
            self.client.log_batch(self.parent_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
            if exp.source and Path(exp.source).is_file():
                self.client.log_artifact(self.parent_id, exp.source, "experiment")
        else:
            self.client.update_run(self.parent_id, status="RUNNING")
        if idle_power is not None:
            self.client.log_metric(self.parent_id, "idle_power_w", idle_power["watts"])
            self.client.set_tag(self.parent_id, "idle_power.meter", idle_power["meter"])
            self.client.set_tag(self.parent_id, "idle_power.provenance", idle_power["provenance"])
        return self.parent_id

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:  # deleted, or another store
            return False

    def end_study(self, status: str = "FINISHED") -> None:
        """Close the parent run -- unless other workers still run trials under it."""
        if self.parent_id:
            self._submit({"op": "end_study", "run": self.parent_id, "status": status})

    # -- trials --------------------------------------------------------------------------------
    def start_trial(self, number: int, knob_values: dict[str, Any], baseline: bool,
                    canonicalised: list[str] | None = None, changed: dict[str, Any] | None = None) -> str:
        """A nested run named for what the trial changes (``t007 seq64 layers-1 bf16``); knob values as short params."""
        tags = {"mlflow.parentRunId": self.parent_id, "trial": str(number), "state": "running",
                "baseline": str(baseline).lower(), ROLE_TAG: "trial"}
        if canonicalised:
            tags["canonicalised"] = "; ".join(canonicalised)[:4000]
        name = f"t{number:03d} " + ("baseline" if baseline else (describe_change(changed or {}) or "baseline values"))
        run_id = self._create_run(name[:250], tags)
        self._submit({"op": "log_batch", "run": run_id, "params": [[k, short(v)] for k, v in knob_values.items()]})
        self._run_names[run_id] = name
        return run_id

    def reuse_trial(self, number: int, twin_run_id: str | None, twin_number: int) -> str:
        """A run for a trial that repeats an earlier one: the earlier run's figures, tagged as reused."""
        tags = {"mlflow.parentRunId": self.parent_id, "trial": str(number), "state": "complete",
                "duplicate_of": str(twin_number), ROLE_TAG: "trial",
                "mlflow.note.content": f"Same knob values as trial {twin_number}: its result is reused; nothing ran."}
        run_id = self._create_run(f"trial-{number:03d}-same-as-{twin_number:03d}", tags)
        if twin_run_id:
            self._submit({"op": "copy_run", "run": run_id, "source": twin_run_id, "time": _now_ms()})
        self._submit({"op": "set_terminated", "run": run_id, "status": "FINISHED"})
        return run_id

    def finish_trial(self, run_id: str, result: TrialResult, summary: TrialSummary) -> None:
        """Metrics grouped by a ``section/`` prefix, so the MLflow chart view makes sections."""
        now = _now_ms()
        metrics = {"energy/total_j": result.energy_j, "time/total_s": result.time_s,
                   "objective/energy_j": summary.energy_j, "objective/quality": summary.quality,
                   "result/energy_saving_pct": summary.energy_saving_pct,
                   "result/quality_retained_pct": summary.quality_retained_pct}
        if summary.test_quality_retained_pct is not None:
            metrics["result/test_quality_retained_pct"] = summary.test_quality_retained_pct
        for name, phase in result.phases.items():
            metrics[f"energy/{name}_j"] = phase.energy_j
            metrics[f"time/{name}_s"] = phase.time_s
            if phase.measurement.repeats > 1:
                metrics[f"energy_spread/{name}_j"] = phase.measurement.spread_j
        for split, scores in result.quality.items():
            for k, v in scores.items():
                metrics[f"quality/{split}_{k}"] = v
        for k, v in result.samples.items():
            metrics[f"samples/{k}"] = v
        for k, v in summary.constraints.items():
            metrics[f"constraint/{k}"] = v
        metrics.update({f"carbon/{k}_g": v for k, v in summary.carbon_g.items()})
        metrics.update({f"net_energy/{k}_j": v for k, v in (summary.net_energy_j or {}).items()})
        if result.serving:  # steady-state serving: J per 1,000 predictions (median and window range), latency
            s = result.serving
            metrics.update({"serving/j_per_1k": s["j_per_1k"], "serving/j_per_1k_min": s["j_per_1k_min"],
                            "serving/j_per_1k_max": s["j_per_1k_max"], "serving/wh_per_1k": s["wh_per_1k"],
                            "serving/latency_p50_ms": s["latency_ms"]["p50"], "serving/latency_p95_ms": s["latency_ms"]["p95"]})
        phases = list(result.phases.values())
        tags = {"state": "complete", "provenance": result.provenance, "meter": result.meter,
                "feasible": str(summary.feasible).lower(), "attribution": summary.attribution[:500]}
        for p in phases:
            tags[f"provenance.{p.phase}"] = p.measurement.provenance
        if result.serving:
            tags["provenance.serving"] = result.serving["provenance"]
        if result.reuse.get("status") == "reused":  # ran on a stored state: which phases, from which trial
            tags["reused_phases"] = ",".join(result.reuse.get("phases", []))
            tags["reused_from_trial"] = str(result.reuse.get("from_trial"))
        params = phases[0].measurement.meter_params if phases else {}
        tags.update({f"meter_param.{k}": str(v) for k, v in params.items()})
        # what the trial achieved, in its name: ``t007 seq64 layers-1 · -62% J · macro_f1 0.973``
        name = self._run_names.pop(run_id, "") or self._run_name(run_id)
        if name:
            tags["mlflow.runName"] = (f"{name} · {-summary.energy_saving_pct:+.0f}% J · {summary.metric} "
                                      f"{summary.quality:.3f}")[:250]
        self._submit({"op": "log_batch", "run": run_id, "tags": [[k, v] for k, v in tags.items()],
                      "metrics": [[k, float(v), now, 0] for k, v in metrics.items() if isinstance(v, (int, float))]})
        self._submit({"op": "log_dict", "run": run_id, "data": _plain(result.to_dict()), "file": "trial_result.json"})
        if result.inputs:  # the data files and models it read, with their content digests: MLflow's dataset tracking
            self._submit({"op": "log_inputs", "run": run_id, "inputs": [
                [Path(path).name, digest or "missing", path, json.dumps(_split_sizes(result))]
                for path, digest in sorted(result.inputs.items())]})
        self._submit({"op": "log_dict", "run": run_id, "data": _plain(result.verifications),
                      "file": "knob_verification.json"})
        self._submit({"op": "set_terminated", "run": run_id, "status": "FINISHED"})

    def _run_name(self, run_id: str) -> str:
        """A run's name as MLflow has it (a run another process opened); empty while deferred."""
        with self._lock:
            if self._deferred or run_id.startswith(PLACEHOLDER):
                return ""
        try:
            return self.client.get_run(run_id).info.run_name or ""
        except Exception:
            return ""

    def fail_trial(self, run_id: str, reason: str, infeasible: bool, traceback_text: str | None = None) -> None:
        """Close a trial's run as FAILED with its reason (and the traceback as an artifact)."""
        try:
            self._submit({"op": "log_batch", "run": run_id, "tags": [["state", "infeasible" if infeasible else "failed"],
                                                                      ["fail_reason", reason[:4000]]]})
            if traceback_text and not infeasible:
                self._submit({"op": "log_text", "run": run_id, "text": traceback_text, "file": "traceback.txt"})
        finally:
            self._submit({"op": "set_terminated", "run": run_id, "status": "FAILED"})

    def stop_trial(self, run_id: str, reason: str) -> None:
        """A trial stopped on purpose (hopeless partway through training): KILLED, with why."""
        try:
            self._submit({"op": "log_batch", "run": run_id, "tags": [["state", "stopped early"],
                                                                      ["stop_reason", reason[:4000]]]})
        finally:
            self._submit({"op": "set_terminated", "run": run_id, "status": "KILLED"})

    def kill_trial(self, run_id: str) -> None:
        """A trial cut off (Ctrl-C, or its worker died): its run is closed as KILLED."""
        try:
            self._submit({"op": "kill", "run": run_id})
        except Exception:  # the run may be gone, or belong to another store
            return

    # -- the front -----------------------------------------------------------------------------
    def log_front(self, rows: list[TrialRow], front_trials: set[int], all_run_ids: dict[int, str],
                  files: list[Path], table: dict[str, list[Any]]) -> None:
        """Pareto table/plots on the parent run (under ``pareto/``); ``pareto`` tag on every trial run."""
        for number, run_id in all_run_ids.items():
            self._submit({"op": "set_tag", "run": run_id, "key": "pareto", "value": str(number in front_trials).lower()})
        for path in files:
            self._submit({"op": "log_artifact", "run": self.parent_id, "path": str(path), "dir": "pareto"})
        # log_table appends to an existing file: one snapshot per study size keeps reruns from duplicating rows.
        self._submit({"op": "log_table", "run": self.parent_id, "data": _plain(table),
                      "file": f"pareto/pareto_table_{len(rows)}_trials.json"})
        now = _now_ms()
        self._submit({"op": "log_batch", "run": self.parent_id, "metrics": [
            ["pareto.points", float(len(front_trials)), now, 0], ["trials.total", float(len(rows)), now, 0]]})

    def log_cost(self, cost) -> None:
        """What the search cost and its break-even, as metrics of the study's parent run."""
        now = _now_ms()
        metrics = {"search/spent_j": cost.search_spent_j, "search/isolation_spent_j": cost.isolation_spent_j,
                   "search/total_spent_j": cost.total_spent_j, "search/failed_trials": float(cost.failed_trials),
                   "search/reused_trials": float(cost.reused_trials)}
        for p in cost.per_recommendation:
            key = "lowest" if p["kind"].startswith("lowest") else "knee"
            for name in ("saved_per_training_run_j", "saved_per_1k_predictions_j", "break_even_training_runs",
                         "break_even_predictions", "months_to_repay", "saved_per_month_j"):
                if p.get(name) is not None:
                    metrics[f"payback/{key}_{name}"] = p[name]
        self._submit({"op": "log_batch", "run": self.parent_id,
                      "metrics": [[k, float(v), now, 0] for k, v in metrics.items()],
                      "tags": [["search.cost_provenance", cost.provenance]]})

    def describe_experiment(self, markdown: str) -> None:
        """The experiment's description (shown at the top of its runs page in the MLflow UI)."""
        self._submit({"op": "set_experiment_tag", "key": "mlflow.note.content", "value": markdown[:60000]})

    def log_report(self, study_name: str, files: list[Path], summary_markdown: str) -> None:
        """The sustainability report's files on the study's parent run, its summary as the description."""
        parent = self.find_parent(study_name)
        if parent is None:
            raise GreenknobsError(f"no MLflow run for study {study_name!r} in {self.uri}: run `greenknobs search` first")
        for path in files:
            self._submit({"op": "log_artifact", "run": parent, "path": str(path), "dir": "report"})
        self.describe_experiment(summary_markdown)

    def experiment_url(self, base_url: str) -> str:
        """The runs page of this experiment in the classic (machine-learning) view, not the GenAI overview."""
        return f"{base_url.rstrip('/')}/#/experiments/{self.experiment_id}?workflowType=machine_learning"

    def counts(self) -> dict[str, int]:
        """Parent and child run counts for this tracker's experiment (used by tests and the CLI)."""
        runs = self.client.search_runs([self.experiment_id], max_results=10000)
        parents = sum(r.data.tags.get(ROLE_TAG) == "study" for r in runs)
        return {"parents": parents, "children": sum("mlflow.parentRunId" in r.data.tags for r in runs)}

    # -- deferring and replaying -----------------------------------------------------------------
    @property
    def deferred(self) -> bool:
        """True while calls are being kept on disk (the server was unreachable and has not caught up)."""
        return self._deferred

    @property
    def pending(self) -> int:
        """Records kept on disk and not replayed yet."""
        with self._lock:
            return self._spool.pending if self._spool is not None else 0

    def resolved(self) -> dict[str, str]:
        """Placeholder -> run id for every run this tracker created while the server was unreachable
        and has since replayed (also those of an earlier process it adopted)."""
        with self._lock:
            return dict(self._ids)

    def flush(self, wait_s: float) -> bool:
        """Wait up to ``wait_s`` for the kept records to be replayed; True when caught up."""
        deadline = time.monotonic() + wait_s
        while self._deferred and time.monotonic() < deadline:
            self._ensure_catching_up()
            thread = self._catching_up
            if thread is not None:
                thread.join(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
        return not self._deferred

    def close(self) -> None:
        """Stop replaying in the background; what is left stays on disk for the next process."""
        self._closing.set()
        if self._catching_up is not None:
            self._catching_up.join(timeout=30)
        with self._lock:
            if self._spool is not None:
                self._spool.close()
                self._spool = None

    def outages(self) -> list[dict[str, Any]]:
        """Each stretch of deferred logging: when it began and ended, records kept and replayed."""
        with self._lock:
            return [{"service": SERVICE, **d, "seconds": round((d["ended"] or time.time()) - d["began"], 2)}
                    for d in self.deferrals]

    def _create_run(self, name: str, tags: dict[str, Any]) -> str:
        key = PLACEHOLDER + uuid.uuid4().hex
        return self._submit({"op": "create_run", "key": key, "name": name, "tags": tags})

    def _submit(self, op: dict[str, Any]) -> Any:
        """Do one MLflow call now, or keep it (in order) while the server is unreachable."""
        with self._lock:
            if not self._deferred:
                try:
                    return self._execute(op, self._ids)
                except Exception as exc:
                    if not unreachable(exc):
                        raise
                    self._defer(exc)
            return self._keep(op)

    def _defer(self, exc: BaseException) -> None:
        if self._spool is None:
            self._spool = Spool.create(self.spool_dir)
            self._refusals = {}
        self._deferred = True
        self.deferrals.append({"began": time.time(), "ended": None, "records": 0, "replayed": 0,
                               "cause": _first_line(exc)})
        self._tell(f"{SERVICE} unreachable ({_first_line(exc)}): logging deferred to {self.spool_dir} -- the trials "
                   "go on and their records are replayed when it is back")
        self._ensure_catching_up()

    def _keep(self, op: dict[str, Any]) -> Any:
        assert self._spool is not None
        if op["op"] == "log_artifact":  # the file may change (or go) before the server is back
            op = {**op, "path": str(self._spool.keep_file(Path(op["path"])))}
        if op["op"] == "create_run":
            op = {**op, "time": _now_ms()}
        self._spool.append(op)
        self.deferrals[-1]["records"] += 1
        return op["key"] if op["op"] == "create_run" else None

    def _ensure_catching_up(self) -> None:
        with self._lock:
            if self._catching_up is None or not self._catching_up.is_alive():
                self._catching_up = threading.Thread(target=self._catch_up, name="greenknobs-mlflow-replay",
                                                     daemon=True)
                self._catching_up.start()

    def _catch_up(self) -> None:
        """Replay the kept records in order, outside the lock (the trials go on); live again once
        none is left. While the server is still unreachable, try again with a growing pause."""
        pause = 1.0
        while not self._closing.wait(pause):
            if self._replay():
                return
            pause = min(pause * 2, 10.0)

    def _replay(self) -> bool:
        while True:
            with self._lock:
                spool = self._spool
                if spool is None:
                    return True
                record = spool.next()
                if record is None:
                    spool.close()  # replayed: removed (a new one is made if the server goes away again)
                    self._spool = None
                    if self._deferred:
                        self._deferred = False
                        last = self.deferrals[-1]
                        last["ended"] = time.time()
                        self._tell(f"{SERVICE} back: {last['replayed']} deferred log records replayed "
                                   f"({last['ended'] - last['began']:.1f} s after logging was deferred); caught up")
                    return True
                index = spool.done
            try:
                self._execute(record, self._ids, spool)
            except Exception as exc:
                if unreachable(exc) and not self._refused(index):
                    return False
                self._tell(f"{SERVICE} refused a deferred record ({record['op']}): {_first_line(exc)}; skipped")
            with self._lock:
                spool.advance()
                self.deferrals[-1]["replayed"] += 1

    def _refused(self, index: int) -> bool:
        """True when the server answers other calls but keeps failing this record: drop it then."""
        try:
            self.client.get_experiment(self.experiment_id)
        except Exception:
            return False
        self._refusals[index] = self._refusals.get(index, 0) + 1
        return self._refusals[index] >= MAX_REFUSALS

    def _adopt_orphans(self) -> None:
        """Replay what an earlier process on this host kept and could not replay (it stopped first);
        its runs still open are closed as KILLED (their process is gone)."""
        for orphan in Spool.orphans(self.spool_dir):
            created, ended = set(), set()
            try:
                while (record := orphan.next()) is not None:
                    self._execute(record, orphan.ids, orphan)
                    if record["op"] == "create_run":
                        created.add(record["key"])
                    elif record["op"] in ("set_terminated", "kill") and str(record.get("run", "")).startswith(PLACEHOLDER):
                        ended.add(record["run"])
                    orphan.advance()
                    self.adopted += 1
            except Exception as exc:  # still unreachable, or refused: left for the next process
                self._tell(f"{SERVICE}: records an earlier worker kept in {orphan.path} could not all be replayed "
                           f"({_first_line(exc)}); {orphan.pending} left for later")
                continue
            for key in created - ended:
                with contextlib.suppress(Exception):
                    self._execute({"op": "kill", "run": key}, orphan.ids)
            with self._lock:
                self._ids.update(orphan.ids)
        if self.adopted:
            self._tell(f"{SERVICE}: {self.adopted} log records an earlier worker on this host had deferred were "
                       "replayed")

    def _tell(self, message: str) -> None:
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):
                listener(message)

    # -- one MLflow call ---------------------------------------------------------------------------
    def _resolve(self, run_id: str | None, ids: dict[str, str]) -> str | None:
        """A run id, placeholders replaced by the run they became (None: not created, yet or ever)."""
        if not run_id or not run_id.startswith(PLACEHOLDER):
            return run_id
        found = ids.get(run_id) or self._ids.get(run_id)
        if found is None:  # made by another process: its runs carry their creation key
            runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_id}'",
                                           max_results=1)
            found = runs[0].info.run_id if runs else None
            if found is not None:
                ids[run_id] = found
        return found

    def _execute(self, op: dict[str, Any], ids: dict[str, str], spool: Spool | None = None) -> Any:
        kind, client = op["op"], self.client
        if kind == "create_run":
            tags = {k: v for k, v in op["tags"].items() if v is not None}
            if "mlflow.parentRunId" in tags:
                tags["mlflow.parentRunId"] = self._resolve(tags["mlflow.parentRunId"], ids)
            found = None
            if "time" in op:  # replayed: an earlier try may have created it before its answer was lost
                runs = client.search_runs([self.experiment_id], max_results=1,
                                          filter_string=f"tags.`{RUN_KEY_TAG}` = '{op['key']}'")
                found = runs[0].info.run_id if runs else None
            run_id = found or client.create_run(self.experiment_id, run_name=op["name"], start_time=op.get("time"),
                                                tags={**tags, RUN_KEY_TAG: op["key"]}).info.run_id
            ids[op["key"]] = run_id
            if spool is not None:
                spool.set_id(op["key"], run_id)
            return run_id
        if kind == "set_experiment_tag":
            return client.set_experiment_tag(self.experiment_id, op["key"], op["value"])
        run = self._resolve(op.get("run"), ids)
        if run is None:
            return None  # a run that was never created (its process died before it could be): nothing to do
        if kind == "log_batch":
            client.log_batch(run, metrics=[Metric(k, v, t, step) for k, v, t, step in op.get("metrics", [])],
                             params=[Param(k, v) for k, v in op.get("params", [])],
                             tags=[RunTag(k, v) for k, v in op.get("tags", [])])
        elif kind == "set_tag":
            client.set_tag(run, op["key"], op["value"])
        elif kind == "set_terminated":
            client.set_terminated(run, status=op["status"])
        elif kind == "log_dict":
            client.log_dict(run, op["data"], op["file"])
        elif kind == "log_text":
            client.log_text(run, op["text"], op["file"])
        elif kind == "log_table":
            client.log_table(run, data=op["data"], artifact_file=op["file"])
        elif kind == "log_artifact":
            client.log_artifact(run, op["path"], op["dir"])
        elif kind == "log_inputs":
            client.log_inputs(run, datasets=[DatasetInput(Dataset(name, digest[:32], "local", source, profile=profile),
                                                          tags=[InputTag("mlflow.data.context", "trial")])
                                             for name, digest, source, profile in op["inputs"]])
        elif kind == "kill":
            if client.get_run(run).info.status == "RUNNING":
                client.set_tag(run, "state", "interrupted")
                client.set_terminated(run, status="KILLED")
        elif kind == "copy_run":
            source = self._resolve(op["source"], ids)
            if source is not None:
                twin = client.get_run(source)
                keep = {k: v for k, v in twin.data.tags.items() if not k.startswith("mlflow.") and k != RUN_KEY_TAG
                        and k not in ("trial", "state", "duplicate_of", ROLE_TAG)}
                client.log_batch(run, metrics=[Metric(k, v, op["time"], 0) for k, v in twin.data.metrics.items()],
                                 params=[Param(k, v) for k, v in twin.data.params.items()],
                                 tags=[RunTag(k, v) for k, v in keep.items()])
        elif kind == "end_study":
            running = client.search_runs([self.experiment_id], max_results=1, filter_string=(
                f"tags.`mlflow.parentRunId` = '{run}' and attributes.status = 'RUNNING'"))
            if not running:
                client.set_terminated(run, status=op["status"])
        else:
            raise ValueError(f"unknown MLflow record {kind!r}")
        return None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _plain(data: Any) -> Any:
    """JSON-safe (what log_dict would write anyway), so a kept record reads back the same."""
    return json.loads(json.dumps(data, default=str))


def short(value: Any) -> str:
    """A knob value as a short param: 4 significant digits for floats, as-is otherwise."""
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.4g}"
    return str(value)


def describe_change(changed: dict[str, Any]) -> str:
    """``{"data.max_seq_len": 64, "model.layers_removed": 1}`` -> ``max_seq_len=64 layers_removed=1``."""
    return " ".join(f"{k.split('.', 1)[-1]}={short(v)}" for k, v in changed.items())


def ui_command(tracking_uri: str, port: int = 5000, host: str = "127.0.0.1") -> tuple[list[str], dict[str, str]]:
    """A lean `mlflow ui` over the same store, on loopback only."""
    import sys

    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", host,
           "--port", str(port), "--workers", "1"]
    root = artifact_root_for(tracking_uri)
    if root:
        cmd += ["--default-artifact-root", root]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return cmd, env


def _split_sizes(result: TrialResult) -> dict[str, Any]:
    """A dataset's profile as MLflow shows it: the rows each split had in this trial."""
    data = result.phases.get("data")
    examples = data.details.get("examples") if data is not None else None
    return {"splits": examples} if isinstance(examples, dict) else {"samples": dict(result.samples)}
