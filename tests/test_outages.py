"""Riding out outages, on real services (issue 19): a PostgreSQL restart mid-search, an MLflow
server stopped for 15 s and started again on the same port, a database outage longer than the
retry window (the worker stops with one line, its finished trial's result kept; a restarted worker
records it without running it again and finishes the study), a damaged SQLite study, and an
MLflow server unreachable at start (bad input, as before).

Each asserts the study's trial count, that no trial and no MLflow run is left RUNNING, and that
MLflow holds exactly one FINISHED run per complete trial. The servers here are this module's own
(a restart must not disturb the session's), stopped with it whatever happens; every worker is
killed (its process group) if a test fails before it exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from greenknobs.config import load_experiment
from greenknobs.errors import GreenknobsError
from greenknobs.search.rows import all_rows
from greenknobs.search.study import open_study
from greenknobs.testing.services import (
    MlflowServer,
    PostgresServer,
    ServiceUnavailable,
    free_port,
    mlflow_server,
    postgres_server,
)
from greenknobs.tracking import Tracker


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Iterator[tuple[PostgresServer, MlflowServer]]:
    work = tmp_path_factory.mktemp("outage-services")
    try:
        with postgres_server(work / "pg") as pg, mlflow_server(pg.create_database("mlflow_backend"),
                                                               work / "artifacts") as ml:
            yield pg, ml
    except ServiceUnavailable as exc:
        if os.environ.get("GREENKNOBS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"service required (GREENKNOBS_REQUIRE_SERVICES=1) but unavailable: {exc}")
        pytest.skip(str(exc))


def experiment(tmp_path: Path, name: str, storage: str, mlflow_uri: str, trials: int, training_s: float) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name,
        "pipeline": {"name": "greenknobs.testing.standin:SleepPipeline", "phase_s": 0.1, "training_s": training_s},
        "knobs": {"standin.width": {"class": "greenknobs.testing.standin:Width", "default": 4, "choices": [1, 2, 3, 4]},
                  "standin.depth": {"class": "greenknobs.testing.standin:Depth", "default": 8, "low": 1, "high": 256}},
        "constraints": {"min_quality_retained": 0.1, "beat_trivial_by": None},
        "budget": {"trials": trials}, "sampler": "random", "meter": "cpu-model",
        "reuse": {"enabled": False}, "stop_hopeless": {"enabled": False},
        "storage": storage, "mlflow_uri": mlflow_uri}))
    return path


@contextmanager
def workers(exp: Path, n: int, *extra: str) -> Iterator[list[subprocess.Popen]]:
    """``n`` search workers (their own process groups), killed on the way out if still running."""
    procs = [subprocess.Popen([sys.executable, "-m", "greenknobs", "search", str(exp), "--heartbeat-s", "2", *extra],
                              cwd=exp.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate(timeout=30)


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str, str]]:
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def study_of(exp: Path):
    return open_study(load_experiment(exp), create=False)


class Watch:
    """The study's trials as the workers write them (one storage, opened once the study exists)."""

    def __init__(self, exp: Path):
        self.exp, self.study = exp, None

    def trials(self) -> list:
        if self.study is None:
            try:
                self.study = study_of(self.exp)
            except GreenknobsError:  # not created yet
                return []
        return self.study.get_trials(deepcopy=False)

    def complete(self) -> int:
        return sum(t.state.name == "COMPLETE" for t in self.trials())


def wait_for(what, timeout: float = 60, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {getattr(what, '__name__', 'it')}")


def assert_consistent(exp: Path, ml_url: str, trials: int) -> None:
    """The study holds its budget, nothing RUNNING; MLflow one FINISHED run per complete trial, nothing RUNNING."""
    loaded = load_experiment(exp)
    study = study_of(exp)
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and "WAITING" not in states, states
    assert states.count("COMPLETE") == trials, states
    tracker = Tracker(ml_url, loaded.name, spool_dir=exp.parent / "inspect-spool")
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=10000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    complete = sorted(t.number for t in study.trials if t.state.name == "COMPLETE")
    finished = sorted(int(r.data.tags["trial"]) for r in runs
                      if r.data.tags.get("greenknobs.role") == "trial" and r.info.status == "FINISHED")
    assert finished == complete  # exactly one finished run per complete trial
    assert sum(r.data.tags.get("greenknobs.role") == "study" for r in runs) == 1
    by_trial = {int(r.data.tags["trial"]): r.info.run_id for r in runs
                if r.data.tags.get("greenknobs.role") == "trial" and r.info.status == "FINISHED"}
    for row in all_rows(study, loaded):  # placeholders of runs created during an outage are resolved
        if row.state == "COMPLETE":
            assert row.mlflow_run_id == by_trial[row.trial]


def test_a_postgresql_restart_mid_search_loses_no_worker_and_no_trial(services, tmp_path):
    pg, ml = services
    exp = experiment(tmp_path, "pg-restart", pg.create_database(), ml.url, trials=8, training_s=1.5)
    watch = Watch(exp)
    with workers(exp, 2) as procs:
        wait_for(lambda: watch.complete() >= 2, timeout=90)
        pg.restart(down_s=4)  # fast shutdown (pg_ctl restart -m fast), and a few seconds before it is back
        results = finish(procs)
    for code, out, err in results:
        assert code == 0 and "Traceback" not in out + err, (out + err)[-3000:]
    outs = "".join(out for _, out, _ in results)
    assert "the study's database" in outs and " retries;" in outs  # the outage was seen and ridden out
    assert_consistent(exp, ml.url, trials=8)


def test_an_mlflow_outage_defers_logging_and_replays_it(services, tmp_path):
    pg, ml = services
    exp = experiment(tmp_path, "mlflow-outage", pg.create_database(), ml.url, trials=6, training_s=1.5)
    watch = Watch(exp)
    with workers(exp, 1) as procs:
        wait_for(lambda: watch.complete() >= 1, timeout=90)
        try:
            ml.stop()
            before = watch.complete()
            time.sleep(15)
            done_meanwhile = watch.complete() - before
        finally:
            ml.start()  # the same port
        (code, out, err), = finish(procs)
    assert code == 0 and "Traceback" not in out + err, (out + err)[-3000:]
    assert done_meanwhile >= 3  # the trials went on while MLflow was away
    assert "logging deferred" in out and "caught up" in out
    assert (tmp_path / "runs" / "mlflow-outage" / "mlflow-spool").is_dir()
    assert not list((tmp_path / "runs" / "mlflow-outage" / "mlflow-spool").glob("*.jsonl"))  # all replayed
    assert_consistent(exp, ml.url, trials=6)


def test_a_database_outage_longer_than_the_window_stops_the_worker_and_a_restart_finishes(services, tmp_path):
    pg, ml = services
    exp = experiment(tmp_path, "long-outage", pg.create_database(), ml.url, trials=3, training_s=4)

    watch = Watch(exp)

    def trial_1_training():
        t = next((t for t in watch.trials() if t.number == 1), None)
        return t if t is not None and "system" in (t.user_attrs.get("spent") or {}).get("phases", {}) else None

    with workers(exp, 1, "--db-retry-s", "3") as procs:
        in_training = wait_for(trial_1_training, timeout=90, every=0.2)
        try:
            pg.stop()
            (code, out, err), = finish(procs, timeout=90)
        finally:
            pg.start()
    assert code == 75 and "Traceback" not in out + err, (out + err)[-3000:]
    line, = err.strip().splitlines()  # one line: what it waited for, and where the result is
    assert line.startswith("greenknobs: error: the study's database (postgresql") and "unreachable for 3 s" in line
    assert "while trying to record a trial's" in line and "Trial 1's complete result is kept in " in line
    assert "kept-outcomes/trial-00001.json" in line and "not run again" in line

    with workers(exp, 1) as procs:
        (code, out, err), = finish(procs)
    assert code == 0 and "Traceback" not in out + err, (out + err)[-3000:]
    assert "trial 1: its complete result, kept on disk through a database outage, is recorded now" in out
    study = study_of(exp)
    kept = study.trials[1]
    assert kept.state.name == "COMPLETE" and kept.user_attrs["worker"] == in_training.user_attrs["worker"]
    assert not [t for t in study.trials if t.user_attrs.get("retry_of") == 1]  # never run again
    assert not list((tmp_path / "runs" / "long-outage" / "kept-outcomes").glob("*.json"))
    assert_consistent(exp, ml.url, trials=3)


def test_a_damaged_sqlite_study_is_one_line(tmp_path, monkeypatch):
    from greenknobs.search import Search

    monkeypatch.chdir(tmp_path)
    exp_path = experiment(tmp_path, "damaged", f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db",
                          trials=1, training_s=0.01)
    exp = load_experiment(exp_path)
    tracker = Tracker(exp.mlflow_uri, exp.name)
    try:
        assert len(Search(exp, tracker).run().study.trials) == 1
    finally:
        tracker.end_study()
    db = tmp_path / "optuna.db"
    intact = db.read_bytes()
    for damage, words, commands in ((intact[: len(intact) // 2], "database disk image is malformed", ("search", "pareto")),
                                    (b"not a database at all " * 200, "file is not a database", ("search",))):
        db.write_bytes(damage)  # truncated (a disk that filled up, a copy cut short), or not SQLite at all
        for command in commands:
            out = subprocess.run([sys.executable, "-m", "greenknobs", command, str(exp_path)], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
            assert out.stderr.strip().splitlines() == [
                f"greenknobs: error: storage sqlite:///{tmp_path}/optuna.db: the SQLite file is damaged ({words}); "
                "restore it from a backup, or move it aside to start the study afresh"]


def test_an_mlflow_server_unreachable_at_start_is_still_bad_input(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    exp = experiment(tmp_path, "no-mlflow", f"sqlite:///{tmp_path}/optuna.db", url, trials=1, training_s=0.01)
    out = subprocess.run([sys.executable, "-m", "greenknobs", "search", str(exp)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line, = out.stderr.strip().splitlines()
    assert line.startswith(f"greenknobs: error: cannot open MLflow store {url}: ") and "Connection refused" in line
    assert not (tmp_path / "optuna.db").exists()  # nothing written to the study
