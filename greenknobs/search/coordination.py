"""Several workers, one study: cross-process locks, worker identity, heartbeats, and the janitor
that recovers the trials of workers that died. The only module importing SQLAlchemy.

* ``StudyLock`` -- mutual exclusion between every process working on one study: a PostgreSQL
  advisory lock (keyed by the study name) or, for SQLite, a lock file beside the database. It
  guards what must happen once (creating tables, the study, the MLflow parent run, queuing the
  baseline) and the moment a worker takes a trial (so the trial budget is exact).
* ``SqliteClaim`` -- SQLite is for one process: a second process on the same file is refused
  with a clear message instead of corrupting or blocking.
* ``Heartbeat`` -- a thread that records a running trial's heartbeat in the storage.
* a worker's identity (host, pid, process start time) stored on every trial it runs, so a
  restarted search on the same host recovers its own dead trials at once, without waiting for
  the heartbeat grace period.
* ``DATABASE`` -- the retrier every call to the study's database goes through (outages.py): a
  lost connection is waited out for the retry window; ``is_connection_error`` says which errors
  are that. A damaged SQLite file is recognised (``damaged_sqlite``) and refused in one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy

from greenknobs.errors import GreenknobsError
from greenknobs.processes import Held, OwnerLock
from greenknobs.search.outages import Retrier
from greenknobs.urls import mask_password, sqlite_path


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_connection_error(exc: BaseException) -> bool:
    """The database went away (refused, reset, restarted, failed over), as opposed to a bad query:
    SQLAlchemy's OperationalError / InterfaceError / disconnection, anywhere in the cause chain
    (Optuna wraps them in StorageInternalError). A damaged SQLite file is not one."""
    if damaged_sqlite(exc) is not None:
        return False
    for e in _chain(exc):
        if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                          sqlalchemy.exc.DisconnectionError)):
            return True
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return True
    return False


# every call to the study's database: retried through an outage for the window (--db-retry-s)
DATABASE = Retrier("the study's database", is_connection_error)

_DAMAGE = ("database disk image is malformed", "file is not a database", "file is encrypted or is not a database")


def damaged_sqlite(exc: BaseException) -> str | None:
    """SQLite's words for a damaged or truncated database file, if that is what ``exc`` says."""
    for e in _chain(exc):
        text = str(getattr(e, "orig", None) or e).lower()
        for words in _DAMAGE:
            if words in text:
                return words
    return None


def check_sqlite_intact(path: str, what: str) -> None:
    """A damaged or truncated SQLite file is one clear line, before anything reads it."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    try:
        conn = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True, timeout=30)
        try:
            verdict = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc):  # in use by another process: not our verdict to give
            return
        verdict = [str(exc)]
    if verdict != ["ok"]:
        raise GreenknobsError(f"{what}: the SQLite file is damaged ({'; '.join(verdict)[:200]}); restore it from a "
                              "backup, or move it aside to start the study afresh")


def _lock_key(study_name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, stable across processes and machines."""
    return int.from_bytes(hashlib.sha256(f"greenknobs:{study_name}".encode()).digest()[:8], "big", signed=True)


class StudyLock:
    """A cross-process lock for one study in one storage. Re-entrant within a thread."""

    def __init__(self, storage_url: str, study_name: str):
        self.url, self.study_name = storage_url, study_name
        self._local = threading.local()
        self._thread_lock = threading.RLock()  # threads of this process (the janitor) queue here first
        self._engine = None
        self._path: Path | None = None
        path = sqlite_path(storage_url)
        if path is not None:
            self._path = Path(path + f".{hashlib.sha1(study_name.encode()).hexdigest()[:8]}.lock")
        elif storage_url.startswith("postgresql"):
            self._engine = sqlalchemy.create_engine(storage_url, poolclass=sqlalchemy.pool.NullPool,
                                                    connect_args={"connect_timeout": 10})

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            depth = getattr(self._local, "depth", 0)
            self._local.depth = depth + 1
            try:
                if depth:
                    yield
                elif self._engine is not None:
                    conn = DATABASE.call(self._lock_connection, "take the study lock")
                    try:
                        yield
                    finally:
                        self._unlock(conn)
                elif self._path is not None:
                    self._path.parent.mkdir(parents=True, exist_ok=True)
                    with open(self._path, "a+") as fh:
                        fcntl.flock(fh, fcntl.LOCK_EX)
                        try:
                            yield
                        finally:
                            fcntl.flock(fh, fcntl.LOCK_UN)
                else:  # another database: no cross-process lock (concurrent *starts* may collide)
                    yield
            finally:
                self._local.depth = depth

    def _lock_connection(self):
        assert self._engine is not None
        conn = self._engine.connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _lock_key(self.study_name)})
        except BaseException:
            conn.close()
            raise
        return conn

    def _unlock(self, conn) -> None:
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(self.study_name)})
            conn.commit()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            # the server dropped the connection (a restart): an advisory lock dies with its session
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def check_reachable(url: str, key: str) -> None:
    """One quick connection, so an unreachable database is one clear line before anything starts."""
    if not url.startswith(("postgresql", "mysql")):
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": 10})
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
        raise GreenknobsError(f"{key}: cannot reach {mask_password(url)}: {first}") from None
    finally:
        engine.dispose()


class SqliteClaim:
    """Exclusive use of a SQLite file by this process (released at close or exit)."""

    def __init__(self, url: str, what: str):
        path = sqlite_path(url)
        self._lock: OwnerLock | None = None
        if path is None:
            return
        try:
            self._lock = OwnerLock(Path(path + ".gk-owner"), f"greenknobs pid {os.getpid()} on {socket.gethostname()}")
        except Held as held:
            raise GreenknobsError(f"{what} {url} is in use by {held.holder}: SQLite serves one greenknobs process at "
                                  "a time; for several workers use PostgreSQL (--storage postgresql://...) and an "
                                  "MLflow tracking server (--mlflow-uri http://...)") from None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process (distinguishes a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": _start_time(pid)}


def is_gone(identity: dict[str, Any]) -> bool:
    """Whether the worker that recorded ``identity`` certainly died (known only on its own host)."""
    if not identity or identity.get("host") != socket.gethostname():
        return False
    return _start_time(int(identity.get("pid", -1))) != identity.get("started")


class Heartbeat:
    """Records a running trial's heartbeat every ``interval_s`` until stopped."""

    def __init__(self, storage, trial_id: int, interval_s: float):
        self._storage, self._trial_id, self._interval = storage, trial_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def _run(self) -> None:
        while True:
            # a missed beat is tolerated (the grace period is long): during an outage, skip it, do not wait
            with contextlib.suppress(Exception), DATABASE.at_once():
                self._storage.record_heartbeat(self._trial_id)
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Periodic:
    """Runs ``fn`` every ``interval_s`` in a daemon thread until closed (the janitor)."""

    def __init__(self, fn, interval_s: float, name: str):
        self._fn, self._interval = fn, interval_s
        self._stop = threading.Event()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._fn()
            except Exception as exc:  # keep sweeping: a database hiccup must not kill the janitor
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def wait(seconds: float) -> None:
    time.sleep(seconds)


class HostWorkers:
    """How many greenknobs workers run on this host right now: each holds a locked file in a
    shared folder for its lifetime; a file whose lock can be taken belongs to a worker that is gone."""

    def __init__(self, folder: str | None = None):
        self.folder = Path(folder or os.environ.get("GREENKNOBS_LOCK_DIR", "/tmp/greenknobs-workers"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._path = self.folder / f"{os.getpid()}.lock"
        self._fh = open(self._path, "w")  # noqa: SIM115 -- held (and locked) for the worker's life
        fcntl.flock(self._fh, fcntl.LOCK_EX)

    def count(self) -> int:
        live = 0
        for path in self.folder.glob("*.lock"):
            if path == self._path:
                live += 1
                continue
            try:
                with open(path, "a") as fh:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fh, fcntl.LOCK_UN)
                with contextlib.suppress(OSError):
                    path.unlink()  # its worker is gone
            except BlockingIOError:
                live += 1
            except OSError:
                continue
        return live

    def close(self) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
        with contextlib.suppress(OSError):
            self._path.unlink()
