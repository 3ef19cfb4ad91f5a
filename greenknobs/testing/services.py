"""Real services for tests and demos: a PostgreSQL server and an MLflow tracking server.

Each starts on a free loopback port (127.0.0.1) and stops with the ``with`` block that started it:
when the body returns or raises, when this process gets SIGTERM (the previous handler is chained and
restored), at interpreter exit, and when this process dies outright (SIGKILL, a crash): a tiny
watchdog process per server stops the server's whole process group once its starter is gone, and on
Linux the server also gets a parent-death signal (it fires when the *thread* that started the server
ends, so enter the context in the thread that lives as long as the server should).

    with postgres_server(tmp) as pg:             # ServiceUnavailable when PostgreSQL is not installed
        pg.url                                   # postgresql+psycopg2://greenknobs:<password>@127.0.0.1:<port>/greenknobs
        pg.create_database()                     # the URL of a new, empty database owned by the same user
        with mlflow_server(pg.create_database("mlflow"), tmp / "artifacts") as ml:
            ml.url                               # http://127.0.0.1:<port>

PostgreSQL: the binaries are found in $GREENKNOBS_PG_BIN, /usr/lib/postgresql/<version>/bin (Debian;
newest first), ``pg_config --bindir`` or PATH. ``initdb`` refuses to run as root, so as root the
server runs as the ``postgres`` system user (created by the Debian package). Authentication: the
superuser ``postgres`` is trusted on 127.0.0.1 and on the unix socket; the application user
``greenknobs`` must give its password (scram-sha-256), so a wrong password really fails.
Durability is traded for speed (fsync off): this is a server for tests, never for data.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["ServiceUnavailable", "PostgresServer", "MlflowServer", "postgres_server", "mlflow_server", "free_port",
           "port_is_free", "postgres_bin_dir"]

LOOPBACK = "127.0.0.1"
APP_USER = "greenknobs"
SUPERUSER = "postgres"


class ServiceUnavailable(RuntimeError):
    """The service cannot run on this machine (binaries or driver missing); tests skip on it."""


# -- ports -----------------------------------------------------------------------------------
def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the kernel's choice). Racy by nature: starters retry."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when a server could listen on ``port`` now (nothing is listening there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _wait_port_free(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not port_is_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# -- stopping on SIGTERM, at exit and when this process dies ------------------------------------
_live: dict[int, Callable[[], None]] = {}
_live_lock = threading.RLock()
_previous_sigterm: Any = None
_sigterm_installed = False
_atexit_registered = False
_next_key = 0
_owner_pid = os.getpid()


def _forget_in_child() -> None:
    """A forked child (multiprocessing's "fork") inherits our handler and the list of servers, but
    the servers are its parent's: a SIGTERM to the child, or its exit, must not stop them."""
    global _live, _live_lock, _sigterm_installed, _previous_sigterm, _owner_pid
    _live = {}
    _live_lock = threading.RLock()
    _owner_pid = os.getpid()
    if _sigterm_installed and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, _previous_sigterm if _previous_sigterm is not None else signal.SIG_DFL)
    _sigterm_installed = False
    _previous_sigterm = None


os.register_at_fork(after_in_child=_forget_in_child)


def _stop_all() -> None:
    if os.getpid() != _owner_pid:  # belt and braces: a child forked without the at-fork hook
        return
    with _live_lock:
        stops = list(_live.values())
        _live.clear()
    for stop in reversed(stops):  # the last started first (an MLflow server before its database)
        with contextlib.suppress(Exception):
            stop()


def _on_sigterm(signum: int, frame: Any) -> None:
    previous = _previous_sigterm
    _stop_all()
    _restore_sigterm()
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:  # SIG_DFL (or a handler installed outside Python): die of SIGTERM, as without us
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _restore_sigterm() -> None:
    global _sigterm_installed, _previous_sigterm
    if not _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:  # someone installed a handler after us: leave theirs
        signal.signal(signal.SIGTERM, _previous_sigterm if _previous_sigterm is not None else signal.SIG_DFL)
    _sigterm_installed = False
    _previous_sigterm = None


def _register(stop: Callable[[], None]) -> int:
    global _sigterm_installed, _previous_sigterm, _atexit_registered, _next_key
    with _live_lock:
        _next_key += 1
        key = _next_key
        _live[key] = stop
        if not _atexit_registered:
            atexit.register(_stop_all)
            _atexit_registered = True
        if not _sigterm_installed and threading.current_thread() is threading.main_thread():
            _previous_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True
    return key


def _unregister(key: int) -> None:
    with _live_lock:
        _live.pop(key, None)
        if not _live:
            _restore_sigterm()


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """preexec_fn: the child gets ``sig`` when the thread that started it dies (Linux prctl).
    prctl is looked up here, in the parent: the child, forked from a process with threads, only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def _death_signal(sig: int, restart: bool) -> Callable[[], None] | None:
    """The parent-death signal for a server's first start (the context's thread), and for a restart
    only from the main thread: the signal fires when the *starting thread* ends, and a restart is
    often made from a helper thread (a test's fault injector). The watchdog still stops the server
    when this process dies."""
    if not restart or threading.current_thread() is threading.main_thread():
        return _die_with_parent(sig)
    return None


_WATCHDOG = """
import os, shutil, signal, sys, time
parent, pgid, first, grace = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
signal.signal(signal.SIGINT, signal.SIG_IGN)
while os.getppid() == parent:
    time.sleep(0.5)
for sig in (first, signal.SIGKILL):
    try:
        os.killpg(pgid, sig)
    except OSError:
        break
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except OSError:
            break
        time.sleep(0.1)
for folder in sys.argv[5:]:
    shutil.rmtree(folder, ignore_errors=True)
"""


def _start_watchdog(pgid: int, first: int, grace_s: float, folders: list[Path] | tuple[()] = ()) -> subprocess.Popen:
    """A tiny process that stops process group ``pgid`` (and removes ``folders``) if this process dies
    without doing it itself (SIGKILL, a crash)."""
    return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(pgid), str(int(first)), str(grace_s),
                             *map(str, folders)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def _end_watchdog(watchdog: subprocess.Popen | None) -> None:
    if watchdog is not None and watchdog.poll() is None:
        watchdog.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(5)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process in process group ``pgid``?"""
    import psutil

    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return False


def _stop_process_group(proc: subprocess.Popen, first: int, grace_s: float) -> None:
    """``first`` to the leader's whole group, SIGKILL after ``grace_s``; returns when the group is gone."""
    pgid = proc.pid  # started with start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, first)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + grace_s
    while _group_alive(pgid) and time.monotonic() < deadline:  # children that outlive the leader
        time.sleep(0.1)
    if proc.poll() is None or _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        deadline = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)


# -- PostgreSQL --------------------------------------------------------------------------------
def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", Path(path).parent.name)) or (0,)


def postgres_bin_dir() -> Path:
    """The folder holding initdb and postgres; ServiceUnavailable if there is none."""
    candidates: list[str] = []
    if os.environ.get("GREENKNOBS_PG_BIN"):
        candidates.append(os.environ["GREENKNOBS_PG_BIN"])
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0:
                candidates.append(out.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    for c in candidates:
        if (Path(c) / "initdb").is_file() and (Path(c) / "postgres").is_file():
            return Path(c)
    raise ServiceUnavailable("PostgreSQL server binaries (initdb, postgres) not found: install the Debian package "
                             "postgresql, or set GREENKNOBS_PG_BIN to their folder")


@dataclass
class PostgresServer:
    """A running PostgreSQL server on 127.0.0.1; URLs are SQLAlchemy URLs with the psycopg2 driver."""

    port: int
    password: str
    database: str
    data_dir: Path
    socket_dir: Path
    log_path: Path
    pid: int
    bin_dir: Path
    host: str = LOOPBACK
    user: str = APP_USER
    superuser: str = SUPERUSER
    driver: str = "postgresql+psycopg2"
    _created: list[str] = field(default_factory=list, repr=False)
    _control: Any = field(default=None, repr=False)  # (stop, start) of the postmaster, set by postgres_server

    def stop(self) -> None:
        """Stop the server as ``pg_ctl stop -m fast`` does (SIGINT to the postmaster: clients are
        disconnected, a checkpoint written); its data stays, and ``start()`` brings it back."""
        self._control[0]()

    def start(self) -> None:
        """Start the stopped server again, on the same port, data and password."""
        self.pid = self._control[1]()

    def restart(self, down_s: float = 0.0) -> None:
        """``pg_ctl restart -m fast``, optionally staying down ``down_s`` seconds in between."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        self.start()

    @property
    def url(self) -> str:
        """The application user's URL (with its password) of the database made at start."""
        return self.url_for(self.database)

    @property
    def admin_url(self) -> str:
        """The superuser's URL (trusted on loopback: no password) of the maintenance database."""
        return f"{self.driver}://{self.superuser}@{self.host}:{self.port}/postgres"

    def url_for(self, database: str | None = None, password: str | None = None, driver: str | None = None) -> str:
        """The application user's URL of ``database``; ``password`` overrides the real one (to test a wrong one)."""
        pw = quote(self.password if password is None else password, safe="")
        return f"{driver or self.driver}://{self.user}:{pw}@{self.host}:{self.port}/{database or self.database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database owned by the application user; returns its URL."""
        if name is None:
            name = f"db_{len(self._created) + 1}_{secrets.token_hex(3)}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database names here are lower-case identifiers, got {name!r}")
        self.execute_admin(f'CREATE DATABASE "{name}" OWNER "{self.user}"')
        self._created.append(name)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self.execute_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def execute_admin(self, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit); returns the rows, if any."""
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.superuser, dbname="postgres",
                                connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def running(self) -> bool:
        return _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that run a child as ``user`` (root only), with that user's groups only."""
    if user is None:
        return {}
    import pwd

    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [], "env": {**_clean_env(), "HOME": pw.pw_dir,
                                                                                "USER": user, "LOGNAME": user}}


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no PGPORT/PGDATA surprises
    env.update(LC_ALL="C", LANG="C")
    return env


def _server_user() -> str | None:
    """None: run as ourselves. As root: the ``postgres`` system user (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ServiceUnavailable("running as root, and there is no 'postgres' system user to run PostgreSQL as "
                                 "(the Debian package postgresql creates it)") from None
    return SUPERUSER


def _own(path: Path, user: str | None) -> None:
    if user is not None:
        import pwd

        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _usable_by(path: Path, user: str | None) -> bool:
    if user is None:
        return os.access(path, os.W_OK | os.X_OK)
    probe = subprocess.run(["test", "-w", str(path), "-a", "-x", str(path)], cwd="/", **_as_user(user),
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@contextlib.contextmanager
def postgres_server(workdir: Path, *, database: str = "greenknobs", password: str | None = None,
                    startup_timeout_s: float = 60.0) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster under ``workdir``, serving on 127.0.0.1:<free port>; stopped on exit."""
    bin_dir = postgres_bin_dir()
    try:
        import psycopg2  # noqa: F401  (the tests' driver; checked before anything starts)
    except ImportError:
        raise ServiceUnavailable("the psycopg2 driver is not installed (pip install psycopg2-binary)") from None
    user = _server_user()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cleanup: list[Path] = []  # folders outside workdir that this call made

    base = Path(tempfile.mkdtemp(prefix="postgres-", dir=workdir))
    _own(base, user)
    if not _usable_by(base, user):  # e.g. pytest's tmp folders are 0700 root: postgres cannot enter them
        base = Path(tempfile.mkdtemp(prefix="greenknobs-pg-"))
        cleanup.append(base)
        _own(base, user)
        if not _usable_by(base, user):
            shutil.rmtree(base, ignore_errors=True)
            raise ServiceUnavailable(f"no folder the {user!r} user can write to (tried {workdir} and {base.parent})")
    data_dir, socket_dir = base / "data", base / "socket"
    socket_dir.mkdir()
    _own(socket_dir, user)
    if len(str(socket_dir)) > 80:  # a unix socket path must fit in 107 bytes
        socket_dir = Path(tempfile.mkdtemp(prefix="gkpg-", dir="/tmp"))
        cleanup.append(socket_dir)
        _own(socket_dir, user)
    log_path = base / "postgres.log"
    log_path.touch()
    _own(log_path, user)
    password = password or f"gk-{secrets.token_hex(8)}"

    proc: subprocess.Popen | None = None
    watchdog: subprocess.Popen | None = None
    key: int | None = None
    port = 0

    def launch(restart: bool = False) -> bool:
        """The postmaster on ``port``, watched; True once it accepts connections."""
        nonlocal proc, watchdog
        with log_path.open("a") as log:
            proc = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(data_dir), "-p", str(port), "-h", LOOPBACK,
                 "-k", str(socket_dir)],
                cwd=base, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_death_signal(signal.SIGINT, restart),
                **(_as_user(user) or {"env": _clean_env()}))
        watchdog = _start_watchdog(proc.pid, signal.SIGINT, 20, cleanup)
        return _wait_postgres(proc, port, startup_timeout_s)

    def start_again() -> int:
        if proc is not None and proc.poll() is None:
            raise RuntimeError("PostgreSQL is already running")
        if not _wait_port_free(port, 30) or not launch(restart=True):
            text = _tail(log_path, 30)
            stop_server()
            raise RuntimeError(f"PostgreSQL did not start again on port {port}; log {log_path}:\n{text}")
        assert proc is not None
        return proc.pid

    def stop_server() -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect clients, checkpoint, exit
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGQUIT)  # "immediate"
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        if proc is not None:  # backends left behind by a killed postmaster
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if _group_alive(proc.pid):
                    os.killpg(proc.pid, signal.SIGKILL)
        _end_watchdog(watchdog)

    def stop() -> None:
        try:
            stop_server()
        finally:
            for folder in cleanup:
                shutil.rmtree(folder, ignore_errors=True)

    try:
        init = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, "--auth-local=trust",
             "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"],
            cwd=base, capture_output=True, text=True, timeout=180, **(_as_user(user) or {"env": _clean_env()}))
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {(init.stderr or init.stdout).strip()[-2000:]}")
        (data_dir / "pg_hba.conf").write_text(
            "# greenknobs test server: the superuser is trusted locally, everyone else gives a password\n"
            f"local all all trust\n"
            f"host all {SUPERUSER} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        with (data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# greenknobs test server: loopback only, fast and not durable\n"
                       f"listen_addresses = '{LOOPBACK}'\nfsync = off\nsynchronous_commit = off\n"
                       "full_page_writes = off\nmax_connections = 200\nshared_buffers = 64MB\n"
                       "log_min_messages = warning\n")

        for _attempt in range(5):  # the free port may be taken between choosing and binding it: choose again
            port = free_port()
            started = launch()
            if key is None:
                key = _register(stop)
            if started:
                break
            text = _tail(log_path, 30)
            stop_server()
            if "could not bind" in text or "already in use" in text:
                continue
            raise RuntimeError(f"PostgreSQL did not start on port {port} within {startup_timeout_s:g} s; "
                               f"log {log_path}:\n{text}")
        else:
            raise RuntimeError(f"PostgreSQL found no free port in 5 attempts; log {log_path}:\n{_tail(log_path)}")

        assert proc is not None
        server = PostgresServer(port=port, password=password, database=database, data_dir=data_dir,
                                socket_dir=socket_dir, log_path=log_path, pid=proc.pid, bin_dir=bin_dir,
                                _control=(stop_server, start_again))
        server.execute_admin(f'CREATE ROLE "{APP_USER}" LOGIN PASSWORD %s', (password,))
        server.execute_admin(f'CREATE DATABASE "{database}" OWNER "{APP_USER}"')
        yield server
    finally:
        try:
            stop()
        finally:
            if key is not None:
                _unregister(key)


def _wait_postgres(proc: subprocess.Popen, port: int, timeout_s: float) -> bool:
    """True once the server accepts a connection; False if it exited or did not answer in time."""
    import psycopg2

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            psycopg2.connect(host=LOOPBACK, port=port, user=SUPERUSER, dbname="postgres", connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            time.sleep(0.1)
    return False


# -- MLflow ------------------------------------------------------------------------------------
@dataclass
class MlflowServer:
    """A running MLflow tracking server on 127.0.0.1."""

    url: str
    port: int
    pid: int
    log_path: Path
    artifact_root: Path
    _control: Any = field(default=None, repr=False)  # (stop, start), set by mlflow_server

    def __str__(self) -> str:
        return self.url

    def stop(self) -> None:
        """Stop the server (its whole process group); ``start()`` brings it back on the same port."""
        self._control[0]()

    def start(self) -> None:
        """Start the stopped server again on the same port, over the same store and artifacts."""
        self.pid = self._control[1]()


def _get_json(url: str, timeout_s: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # loopback http only
        body = response.read()
    return json.loads(body) if body.strip().startswith(b"{") else body.decode(errors="replace")


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifact_root: Path, *, proxy_artifacts: bool = True,
                  startup_timeout_s: float = 180.0) -> Iterator[MlflowServer]:
    """``mlflow server`` on 127.0.0.1:<free port> with one worker, its process group stopped on exit.

    ``proxy_artifacts`` (default): clients upload artifacts over HTTP and the server writes them under
    ``artifact_root`` (``--artifacts-destination``), as workers on other machines would. False: the
    experiments' artifact location is ``artifact_root`` itself (``--default-artifact-root``), which
    every client must be able to write.
    """
    artifact_root = Path(artifact_root).resolve()
    artifact_root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc: subprocess.Popen | None = None
    watchdog: subprocess.Popen | None = None
    key: int | None = None
    port = 0

    def stop() -> None:
        if proc is not None:
            _stop_process_group(proc, signal.SIGTERM, grace_s=15)
            _end_watchdog(watchdog)
            _wait_port_free(port, 10)

    def launch(restart: bool = False) -> bool:
        """The server on ``port``, watched; True once it answers API calls."""
        nonlocal proc, watchdog
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
               "--host", LOOPBACK, "--port", str(port), "--workers", "1"]
        if proxy_artifacts:
            cmd += ["--serve-artifacts", "--artifacts-destination", str(artifact_root)]
        else:
            cmd += ["--no-serve-artifacts", "--default-artifact-root", artifact_root.as_uri()]
        with log_path.open("a") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True,
                                    preexec_fn=_death_signal(signal.SIGTERM, restart))
        watchdog = _start_watchdog(proc.pid, signal.SIGTERM, 15)
        url = f"http://{LOOPBACK}:{port}"
        deadline = time.monotonic() + startup_timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                _get_json(f"{url}/health")
                _get_json(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
                return True
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.25)
        return False

    def start_again() -> int:
        if proc is not None and proc.poll() is None:
            raise RuntimeError("the MLflow server is already running")
        if not _wait_port_free(port, 30) or not launch(restart=True):
            text = _tail(log_path, 30)
            stop()
            raise RuntimeError(f"the MLflow server did not start again on port {port}; log {log_path}:\n{text}")
        assert proc is not None
        return proc.pid

    try:
        for _attempt in range(3):
            port = free_port()
            log_path = artifact_root.parent / f"mlflow-server-{port}.log"
            started = launch()
            if key is None:
                key = _register(stop)
            if started:
                break
            text = _tail(log_path, 30)
            stop()
            if "already in use" in text or "address in use" in text.lower():
                continue
            raise RuntimeError(f"the MLflow server did not start on port {port} within {startup_timeout_s:g} s; "
                               f"log {log_path}:\n{text}")
        else:
            raise RuntimeError("the MLflow server found no free port in 3 attempts")
        assert proc is not None
        yield MlflowServer(url=f"http://{LOOPBACK}:{port}", port=port, pid=proc.pid, log_path=log_path,
                           artifact_root=artifact_root, _control=(stop, start_again))
    finally:
        try:
            stop()
        finally:
            if key is not None:
                _unregister(key)
