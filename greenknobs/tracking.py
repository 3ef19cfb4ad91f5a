"""MLflow logging: one parent run per study, one nested run per trial. The only module importing mlflow.

Uses ``MlflowClient`` with explicit run ids rather than the fluent active-run stack, so a
failed or interrupted trial can never leave the wrong run "active".
"""

from __future__ import annotations

import os
import time
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
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from greenknobs.errors import GreenknobsError
from greenknobs.phases import TrialResult
from greenknobs.records import TrialRow, TrialSummary
from greenknobs.urls import mask_password, normalise_db_url

# Schema creation/migration chatter on every new store is noise for our users.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

STUDY_TAG = "greenknobs.study"
ROLE_TAG = "greenknobs.role"


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
    def __init__(self, tracking_uri: str, experiment_name: str):
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
        the one tagged with the study's name, else a new one. Called under the study lock."""
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
        if not self.parent_id:
            return
        running = self.client.search_runs([self.experiment_id], max_results=1, filter_string=(
            f"tags.`mlflow.parentRunId` = '{self.parent_id}' and attributes.status = 'RUNNING'"))
        if not running:
            self.client.set_terminated(self.parent_id, status=status)

    # -- trials --------------------------------------------------------------------------------
    def start_trial(self, number: int, knob_values: dict[str, Any], baseline: bool,
                    canonicalised: list[str] | None = None, changed: dict[str, Any] | None = None) -> str:
        """A nested run named for what the trial changes (``t007 seq64 layers-1 bf16``); knob values as short params."""
        tags = {"mlflow.parentRunId": self.parent_id, "trial": str(number), "state": "running",
                "baseline": str(baseline).lower(), ROLE_TAG: "trial"}
        if canonicalised:
            tags["canonicalised"] = "; ".join(canonicalised)[:4000]
        name = f"t{number:03d} " + ("baseline" if baseline else (describe_change(changed or {}) or "baseline values"))
        run = self.client.create_run(self.experiment_id, run_name=name[:250], tags=tags)
        self.client.log_batch(run.info.run_id, params=[Param(k, short(v)) for k, v in knob_values.items()])
        self._run_names[run.info.run_id] = name
        return run.info.run_id

    def reuse_trial(self, number: int, twin_run_id: str | None, twin_number: int) -> str:
        """A run for a trial that repeats an earlier one: the earlier run's figures, tagged as reused."""
        tags = {"mlflow.parentRunId": self.parent_id, "trial": str(number), "state": "complete",
                "duplicate_of": str(twin_number), ROLE_TAG: "trial",
                "mlflow.note.content": f"Same knob values as trial {twin_number}: its result is reused; nothing ran."}
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number:03d}-same-as-{twin_number:03d}", tags=tags)
        if twin_run_id:
            twin = self.client.get_run(twin_run_id)
            now = int(time.time() * 1000)
            keep = {k: v for k, v in twin.data.tags.items() if not k.startswith("mlflow.") and k not in tags}
            self.client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in twin.data.metrics.items()],
                                  params=[Param(k, v) for k, v in twin.data.params.items()],
                                  tags=[RunTag(k, v) for k, v in keep.items()])
        self.client.set_terminated(run.info.run_id, status="FINISHED")
        return run.info.run_id

    def finish_trial(self, run_id: str, result: TrialResult, summary: TrialSummary) -> None:
        """Metrics grouped by a ``section/`` prefix, so the MLflow chart view makes sections."""
        now = int(time.time() * 1000)
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
        phases = list(result.phases.values())
        tags = {"state": "complete", "provenance": result.provenance, "meter": result.meter,
                "feasible": str(summary.feasible).lower(), "attribution": summary.attribution[:500]}
        for p in phases:
            tags[f"provenance.{p.phase}"] = p.measurement.provenance
        if result.reuse.get("status") == "reused":  # ran on a stored state: which phases, from which trial
            tags["reused_phases"] = ",".join(result.reuse.get("phases", []))
            tags["reused_from_trial"] = str(result.reuse.get("from_trial"))
        params = phases[0].measurement.meter_params if phases else {}
        tags.update({f"meter_param.{k}": str(v) for k, v in params.items()})
        # what the trial achieved, in its name: ``t007 seq64 layers-1 · -62% J · macro_f1 0.973``
        name = self._run_names.pop(run_id, "") or self.client.get_run(run_id).info.run_name
        tags["mlflow.runName"] = (f"{name} · {-summary.energy_saving_pct:+.0f}% J · {summary.metric} "
                                  f"{summary.quality:.3f}")[:250]
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                                               if isinstance(v, (int, float))],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.log_dict(run_id, result.to_dict(), "trial_result.json")
        self.client.log_dict(run_id, result.verifications, "knob_verification.json")
        self.client.set_terminated(run_id, status="FINISHED")

    def fail_trial(self, run_id: str, reason: str, infeasible: bool, traceback_text: str | None = None) -> None:
        """Close a trial's run as FAILED with its reason (and the traceback as an artifact)."""
        try:
            self.client.set_tag(run_id, "state", "infeasible" if infeasible else "failed")
            self.client.set_tag(run_id, "fail_reason", reason[:4000])
            if traceback_text and not infeasible:
                self.client.log_text(run_id, traceback_text, "traceback.txt")
        finally:
            self.client.set_terminated(run_id, status="FAILED")

    def stop_trial(self, run_id: str, reason: str) -> None:
        """A trial stopped on purpose (hopeless partway through training): KILLED, with why."""
        try:
            self.client.set_tag(run_id, "state", "stopped early")
            self.client.set_tag(run_id, "stop_reason", reason[:4000])
        finally:
            self.client.set_terminated(run_id, status="KILLED")

    def kill_trial(self, run_id: str) -> None:
        """A trial cut off (Ctrl-C, or its worker died): its run is closed as KILLED."""
        try:
            if self.client.get_run(run_id).info.status != "RUNNING":
                return
        except Exception:
            return
        self.client.set_tag(run_id, "state", "interrupted")
        self.client.set_terminated(run_id, status="KILLED")

    # -- the front -----------------------------------------------------------------------------
    def log_front(self, rows: list[TrialRow], front_trials: set[int], all_run_ids: dict[int, str],
                  files: list[Path], table: dict[str, list[Any]]) -> None:
        """Pareto table/plots on the parent run (under ``pareto/``); ``pareto`` tag on every trial run."""
        for number, run_id in all_run_ids.items():
            self.client.set_tag(run_id, "pareto", str(number in front_trials).lower())
        for path in files:
            self.client.log_artifact(self.parent_id, str(path), "pareto")
        # log_table appends to an existing file: one snapshot per study size keeps reruns from duplicating rows.
        self.client.log_table(self.parent_id, data=table, artifact_file=f"pareto/pareto_table_{len(rows)}_trials.json")
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric("pareto.points", float(len(front_trials)), now, 0),
                                                      Metric("trials.total", float(len(rows)), now, 0)])

    def log_cost(self, cost) -> None:
        """What the search cost and its break-even, as metrics of the study's parent run."""
        now = int(time.time() * 1000)
        metrics = {"search/spent_j": cost.search_spent_j, "search/isolation_spent_j": cost.isolation_spent_j,
                   "search/total_spent_j": cost.total_spent_j, "search/failed_trials": float(cost.failed_trials),
                   "search/reused_trials": float(cost.reused_trials)}
        for p in cost.per_recommendation:
            key = "lowest" if p["kind"].startswith("lowest") else "knee"
            for name in ("saved_per_training_run_j", "saved_per_1k_predictions_j", "break_even_training_runs",
                         "break_even_predictions"):
                if p[name] is not None:
                    metrics[f"payback/{key}_{name}"] = p[name]
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        self.client.set_tag(self.parent_id, "search.cost_provenance", cost.provenance)

    def describe_experiment(self, markdown: str) -> None:
        """The experiment's description (shown at the top of its runs page in the MLflow UI)."""
        self.client.set_experiment_tag(self.experiment_id, "mlflow.note.content", markdown[:60000])

    def log_report(self, study_name: str, files: list[Path], summary_markdown: str) -> None:
        """The sustainability report's files on the study's parent run, its summary as the description."""
        parent = self.find_parent(study_name)
        if parent is None:
            raise GreenknobsError(f"no MLflow run for study {study_name!r} in {self.uri}: run `greenknobs search` first")
        for path in files:
            self.client.log_artifact(parent, str(path), "report")
        self.describe_experiment(summary_markdown)

    def experiment_url(self, base_url: str) -> str:
        """The runs page of this experiment in the classic (machine-learning) view, not the GenAI overview."""
        return f"{base_url.rstrip('/')}/#/experiments/{self.experiment_id}?workflowType=machine_learning"

    def counts(self) -> dict[str, int]:
        """Parent and child run counts for this tracker's experiment (used by tests and the CLI)."""
        runs = self.client.search_runs([self.experiment_id], max_results=10000)
        parents = sum(r.data.tags.get(ROLE_TAG) == "study" for r in runs)
        return {"parents": parents, "children": sum("mlflow.parentRunId" in r.data.tags for r in runs)}


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
