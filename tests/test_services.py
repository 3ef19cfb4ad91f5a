"""The real services the distributed tests run on: PostgreSQL and an MLflow tracking server start
on free loopback ports, work, and leave nothing behind -- also when the body raises, and when the
process that started them gets SIGTERM or is killed outright."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from greenknobs.testing.services import (
    ServiceUnavailable,
    free_port,
    mlflow_server,
    port_is_free,
    postgres_bin_dir,
    postgres_server,
)

ROOT = Path(__file__).resolve().parents[1]


def _require_postgres() -> None:
    try:
        postgres_bin_dir()
    except ServiceUnavailable as exc:
        if os.environ.get("GREENKNOBS_REQUIRE_SERVICES") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _gone(pid: int, timeout_s: float = 30.0) -> bool:
    """The process has exited (a zombie no one reaped yet counts as gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def _listening(port: int) -> bool:
    return not port_is_free(port)


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_free_port_is_free():
    port = free_port()
    assert 1024 <= port <= 65535 and port_is_free(port)


def test_postgres_starts_takes_writes_and_stops(tmp_path):
    _require_postgres()
    with postgres_server(tmp_path) as pg:
        assert pg.url.startswith(f"postgresql+psycopg2://greenknobs:{pg.password}@127.0.0.1:{pg.port}/")
        assert _listening(pg.port) and pg.running()
        engine = sa.create_engine(pg.url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("CREATE TABLE trials (id serial PRIMARY KEY, value double precision)"))
                conn.execute(sa.text("INSERT INTO trials (value) VALUES (1.5), (2.5)"))
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT sum(value) FROM trials")).scalar() == 4.0
                assert conn.execute(sa.text("SELECT inet_server_addr()::text")).scalar().startswith("127.0.0.1")
        finally:
            engine.dispose()
        # a second, empty database for the same user
        other = pg.create_database()
        engine = sa.create_engine(other)
        try:
            with engine.connect() as conn:
                tables = conn.execute(sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar()
                assert tables == 0
        finally:
            engine.dispose()
        # the password is really checked
        bad = sa.create_engine(pg.url_for(password="wrong"))
        with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
            bad.connect()
        bad.dispose()
        pid, port = pg.pid, pg.port
    assert _gone(pid), "the postgres server outlived its context"
    assert port_is_free(port)


def test_postgres_stops_when_the_body_raises(tmp_path):
    _require_postgres()
    with pytest.raises(RuntimeError, match="boom"), postgres_server(tmp_path) as pg:
        pid, port = pg.pid, pg.port
        raise RuntimeError("boom")
    assert _gone(pid) and port_is_free(port)


def test_mlflow_server_on_postgres(postgres, tmp_path):
    backend = postgres.create_database()
    with mlflow_server(backend, tmp_path / "artifacts") as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        created = _post(f"{server.url}/api/2.0/mlflow/experiments/create", {"name": "services-test"})
        found = _get(f"{server.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=services-test")
        assert found["experiment"]["experiment_id"] == created["experiment_id"]
        pid, port = server.pid, server.port
        group = [p.pid for p in psutil.Process(pid).children(recursive=True)] + [pid]
    assert all(_gone(p) for p in group), "an MLflow server process outlived its context"
    assert port_is_free(port)
    # what it wrote is in PostgreSQL
    engine = sa.create_engine(backend)
    try:
        with engine.connect() as conn:
            names = conn.execute(sa.text("SELECT name FROM experiments")).scalars().all()
    finally:
        engine.dispose()
    assert "services-test" in names


def test_fixtures(postgres_url, mlflow_server_url):
    assert postgres_url.startswith("postgresql+psycopg2://") and "@127.0.0.1:" in postgres_url
    assert mlflow_server_url.startswith("http://127.0.0.1:")
    assert _get(f"{mlflow_server_url}/api/2.0/mlflow/experiments/search?max_results=1")["experiments"]


CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from greenknobs.testing.services import mlflow_server, postgres_server

    with postgres_server(Path(sys.argv[1])) as pg:
        info = {"postgres": pg.pid, "postgres_port": pg.port}
        if sys.argv[2] == "mlflow":
            with mlflow_server(pg.create_database("mlflow"), Path(sys.argv[1]) / "artifacts") as ml:
                info.update(mlflow=ml.pid, mlflow_port=ml.port)
                print(json.dumps(info), flush=True)
                time.sleep(600)
        print(json.dumps(info), flush=True)
        time.sleep(600)
""")


def _start_child(tmp_path: Path, what: str) -> tuple[subprocess.Popen, dict]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), what], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = child.stdout.readline() if child.stdout else ""
    if not line:
        child.kill()
        pytest.fail(f"child did not start its servers: {child.communicate(timeout=30)[1][-3000:]}")
    return child, json.loads(line)


def _kill_leftovers(pids: list[int]) -> None:
    """If a test fails because a server survived, still leave nothing behind."""
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def _family(pid: int) -> list[int]:
    proc = psutil.Process(pid)
    return [pid] + [p.pid for p in proc.children(recursive=True)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_postgres_left_when_its_starter_dies(tmp_path, sig):
    _require_postgres()
    child, info = _start_child(tmp_path, "postgres")
    server = _family(info["postgres"])
    try:
        assert _listening(info["postgres_port"])
        child.send_signal(sig)
        child.wait(60)
        assert all(_gone(p) for p in server), f"postgres survived the {sig.name} of the process that started it"
        assert port_is_free(info["postgres_port"])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        _kill_leftovers(server)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_mlflow_server_left_when_its_starter_dies(tmp_path, sig):
    _require_postgres()
    child, info = _start_child(tmp_path, "mlflow")
    servers = _family(info["mlflow"]) + _family(info["postgres"])
    try:
        assert _listening(info["mlflow_port"]) and _listening(info["postgres_port"])
        child.send_signal(sig)
        child.wait(60)
        assert all(_gone(p) for p in servers), f"a server survived the {sig.name} of the process that started it"
        assert port_is_free(info["mlflow_port"]) and port_is_free(info["postgres_port"])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        _kill_leftovers(servers)


def _sleep_long() -> None:
    time.sleep(60)


def test_a_forked_child_does_not_stop_its_parents_servers(tmp_path):
    """A worker forked from this process (multiprocessing's "fork") inherits the SIGTERM handler;
    terminating it, or its normal exit, must leave this process's PostgreSQL running."""
    import multiprocessing as mp

    _require_postgres()
    with postgres_server(tmp_path) as pg:
        ctx = mp.get_context("fork")
        worker = ctx.Process(target=_sleep_long)
        worker.start()
        time.sleep(0.3)
        worker.terminate()
        worker.join(30)
        quick = ctx.Process(target=time.sleep, args=(0.1,))
        quick.start()
        quick.join(30)
        engine = sa.create_engine(pg.url)
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("select 1")).scalar() == 1
        finally:
            engine.dispose()
