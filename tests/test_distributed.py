"""Many workers, one study, on a real PostgreSQL and a real MLflow tracking server: nothing
collides, nothing repeats, nothing is lost when a worker dies, and SQLite refuses to be shared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from greenknobs.testing.services import mlflow_server

ROOT = Path(__file__).resolve().parents[1]


def standin_experiment(path: Path, storage: str, mlflow_uri: str, trials: int, **pipeline) -> Path:
    exp = {
        "name": "standin",
        "pipeline": {"name": "greenknobs.testing.standin:SleepPipeline", "phase_s": 0.05, **pipeline},
        "knobs": {"standin.width": {"class": "greenknobs.testing.standin:Width", "default": 4, "choices": [1, 2, 3, 4]},
                  "standin.depth": {"class": "greenknobs.testing.standin:Depth", "default": 8, "low": 1, "high": 8}},
        "constraints": {"min_quality_retained": 0.1, "beat_trivial_by": None},
        "budget": {"trials": trials}, "sampler": "random", "meter": "cpu-model",
        "storage": storage, "mlflow_uri": mlflow_uri,
    }
    path.write_text(yaml.safe_dump(exp))
    return path


def worker(exp: Path, *extra: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "greenknobs", "search", str(exp), *extra], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def load(exp_path: Path, storage: str):
    from greenknobs.config import load_experiment
    from greenknobs.search.study import open_study

    exp = load_experiment(exp_path).with_overrides(storage=storage)
    return exp, open_study(exp, create=False)


def test_three_workers_started_together_share_one_study(postgres, tmp_path):
    storage = postgres.create_database()  # empty: the workers create the tables
    with mlflow_server(postgres.create_database(), tmp_path / "artifacts") as ml:
        exp_path = standin_experiment(tmp_path / "exp.yaml", storage.replace("+psycopg2", ""), ml.url, trials=9)
        started = time.monotonic()
        procs = [worker(exp_path, cwd=tmp_path) for _ in range(3)]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        wall = time.monotonic() - started
        for p, out in zip(procs, outs):
            assert p.returncode == 0, out[-3000:]
            assert "Traceback" not in out

        exp, study = load(exp_path, storage)
        trials = study.trials
        done = [t for t in trials if t.state.name == "COMPLETE"]
        assert len(done) == 9 and len(trials) == 9  # exactly the budget: the study's total, not per worker
        assert len({t.number for t in trials}) == 9
        assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
        combos = [json.dumps(t.params, sort_keys=True) for t in done if not t.user_attrs.get("duplicate_of")]
        assert len(set(combos)) == len(combos)  # no knob combination ran twice
        assert len({t.user_attrs["worker"]["pid"] for t in done}) >= 2  # the work really was shared

        from greenknobs.tracking import Tracker

        tracker = Tracker(ml.url, "standin")
        runs = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
        parents = [r for r in runs if r.data.tags.get("greenknobs.role") == "study"]
        children = [r for r in runs if r.data.tags.get("greenknobs.role") == "trial"]
        assert len(parents) == 1 and len(children) == 9
        assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
        assert not [r for r in children if r.info.status == "RUNNING"]

        fronts = []
        for _ in range(2):  # the same front, read from any process
            out = subprocess.run([sys.executable, "-m", "greenknobs", "pareto", str(exp_path), "--json"], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            fronts.append([r["trial"] for r in json.loads(out.stdout)])
        assert fronts[0] == fronts[1] and fronts[0]
        print(f"\n3 workers, 9 trials: {wall:.1f} s wall")


def test_a_killed_worker_loses_nothing(postgres, mlflow_server_url, tmp_path):
    """SIGKILL in the middle of a trial; a worker restarted on the same host recovers it at once:
    failed and re-queued with the same knob values, its MLflow run KILLED, its energy counted."""
    storage = postgres.create_database()
    exp_path = standin_experiment(tmp_path / "exp.yaml", storage, mlflow_server_url, trials=3, training_s=30)
    exp, _ = None, None
    first = worker(exp_path, "--heartbeat-s", "1", "--grace-s", "5", cwd=tmp_path)
    try:
        deadline = time.time() + 120
        victim = None
        while time.time() < deadline and victim is None:
            time.sleep(0.5)
            try:
                exp, study = load(exp_path, storage)
            except Exception:
                continue
            running = [t for t in study.trials if t.state.name == "RUNNING" and t.user_attrs.get("spent")]
            victim = running[0] if running else None
        assert victim is not None, "no trial got into training"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # no cleanup of any kind
        first.wait(timeout=30)

    recovered_at = time.monotonic()
    second = worker(exp_path, "--heartbeat-s", "1", "--grace-s", "5", cwd=tmp_path)
    try:
        deadline = time.time() + 60
        retry = None
        while time.time() < deadline and retry is None:
            time.sleep(0.5)
            _, study = load(exp_path, storage)
            # running again with its values drawn: a queued trial's values become its params only
            # when the worker draws them, one knob at a time, a moment after it starts RUNNING
            retry = next((t for t in study.trials if t.user_attrs.get("retry_of") == victim.number
                          and t.state.name != "WAITING" and set(t.params) == set(victim.params)), None)
        recovery_s = time.monotonic() - recovered_at
        assert retry is not None, "the killed trial was not re-queued within a minute"
        dead = study.trials[victim.number]
        assert dead.state.name == "FAIL" and "fail_reason" not in dead.user_attrs
        assert retry.params == victim.params  # the same knob values
        assert "spent" not in retry.user_attrs or retry.user_attrs.get("mlflow_run_id") != victim.user_attrs["mlflow_run_id"]
        assert dead.user_attrs["spent"]["energy_j"] > 0  # what the killed attempt spent, kept
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=60)

    from greenknobs.tracking import Tracker

    tracker = Tracker(mlflow_server_url, "standin")
    killed = tracker.client.get_run(victim.user_attrs["mlflow_run_id"])
    assert killed.info.status == "KILLED"
    print(f"\nrecovery after the kill: {recovery_s:.1f} s")

    # the search's cost counts the killed attempt's energy
    from greenknobs.search.publish import search_cost
    from greenknobs.search.rows import all_rows, front_rows

    exp, study = load(exp_path, storage)
    cost = search_cost(exp, study, front_rows(study, exp), all_rows(study, exp))
    assert cost.search_spent_j >= dead.user_attrs["spent"]["energy_j"] > 0


def test_sigterm_stops_a_search_cleanly_and_the_next_run_retries_the_trial(tmp_path):
    """A scheduler's SIGTERM (preemption) mid-trial: the search exits at once with the trial failed
    and its MLflow run KILLED; the next run re-queues it with the same knob values."""
    storage, mlflow_uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    exp_path = standin_experiment(tmp_path / "exp.yaml", storage, mlflow_uri, trials=2, training_s=60)
    proc = worker(exp_path, cwd=tmp_path)
    try:
        deadline, victim = time.time() + 120, None
        while time.time() < deadline and victim is None:
            time.sleep(0.5)
            try:
                _, study = load(exp_path, storage)
            except Exception:
                continue
            victim = next((t for t in study.trials if t.state.name == "RUNNING" and t.user_attrs.get("spent")), None)
        assert victim is not None, "no trial got into training"
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        stopped_s = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in out, out[-2000:]
    assert "interrupted" in out
    _, study = load(exp_path, storage)
    dead = study.trials[victim.number]
    assert dead.state.name == "FAIL" and dead.user_attrs["spent"]["energy_j"] > 0
    from greenknobs.tracking import Tracker

    assert Tracker(mlflow_uri, "standin").client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    print(f"\nstopped {stopped_s:.1f} s after SIGTERM")

    # the next run retries it first, with the same knob values
    again = worker(exp_path, cwd=tmp_path)
    try:
        deadline, retry = time.time() + 60, None
        while time.time() < deadline and retry is None:
            time.sleep(0.5)
            _, study = load(exp_path, storage)
            # params appear one knob at a time as the worker draws them: wait for all of them
            retry = next((t for t in study.trials if t.user_attrs.get("retry_of") == victim.number
                          and t.state.name == "RUNNING" and set(t.params) == set(victim.params)), None)
        assert retry is not None and retry.params == victim.params
    finally:
        os.kill(again.pid, signal.SIGTERM)
        again.communicate(timeout=30)
    assert again.returncode == 130


def test_sqlite_refuses_a_second_worker(tmp_path):
    exp_path = standin_experiment(tmp_path / "exp.yaml", f"sqlite:///{tmp_path}/optuna.db",
                                  f"sqlite:///{tmp_path}/mlflow.db", trials=2, training_s=20)
    first = worker(exp_path, cwd=tmp_path)
    try:
        time.sleep(8)  # the first one holds the store
        second = subprocess.run([sys.executable, "-m", "greenknobs", "search", str(exp_path)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert "SQLite serves one greenknobs process" in second.stderr and "PostgreSQL" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=60)


def test_postgresql_urls_just_work_and_secrets_stay_hidden(postgres, tmp_path):
    from greenknobs.errors import ConfigError
    from greenknobs.urls import mask_password, normalise_db_url

    plain = postgres.url.replace("postgresql+psycopg2://", "postgresql://")
    assert normalise_db_url(plain, "storage").startswith(("postgresql+psycopg2://", "postgresql+psycopg://"))
    assert mask_password(plain) == plain.replace(postgres.password, "***")
    assert normalise_db_url("postgres://u:p@h/db", "storage").startswith("postgresql+")
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:  # a driver that is not installed: one line naming it
        with pytest.raises(ConfigError, match=r"pip install 'psycopg\[binary\]'"):
            normalise_db_url("postgresql+psycopg://u:p@h/db", "storage")
    wrong = postgres.url_for(password="not-the-password")
    exp_path = standin_experiment(tmp_path / "exp.yaml", wrong, f"sqlite:///{tmp_path}/mlflow.db", trials=1)
    out = subprocess.run([sys.executable, "-m", "greenknobs", "search", str(exp_path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "not-the-password" not in out.stderr + out.stdout
