"""Child processes that must end with the command that started them (a server we launch).

The child runs in its own process group; SIGTERM, SIGINT or SIGHUP to us, an exception, or a
normal return all stop the whole group (SIGTERM, then SIGKILL after a grace period), so a
server never outlives its command and never keeps holding its port.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the child's process group, SIGKILL what is left after ``grace_s``."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of an exited leader (workers)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL cannot be ignored; reaped below if late
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP (a scheduler preempting the job, a closed terminal)
    raise KeyboardInterrupt like Ctrl-C, so the code that cleans up after an interrupt -- the
    running trial failed and re-queued, its MLflow run closed, locks and servers released -- runs
    for them too, instead of the process dying mid-trial."""
    previous: dict[signal.Signals, object] = {}

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


@contextlib.contextmanager
def group_process(cmd: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` in a new process group; stop the group on exit and on SIGTERM/SIGINT/SIGHUP."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    previous: dict[signal.Signals, object] = {}

    def on_signal(signum, _frame):
        stop_group(proc)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread: the caller's own handling applies
            pass
    try:
        yield proc
    finally:
        stop_group(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def serve(cmd: list[str], env: dict[str, str] | None, host: str, port: int,
          on_ready: Callable[[], None], timeout_s: float = 120.0) -> int:
    """Run a server until it exits or we are told to stop; ``on_ready`` once its port answers."""
    with group_process(cmd, env) as proc:
        deadline = time.monotonic() + timeout_s
        while not port_open(host, port):
            if proc.poll() is not None:
                return proc.returncode or 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not open {host}:{port} within {timeout_s:.0f} s")
            time.sleep(0.2)
        on_ready()
        return proc.wait()


class OwnerLock:
    """An exclusive, non-blocking lock on a file that names its holder; released at close or at
    process exit (the kernel drops flock locks with the descriptor, also after SIGKILL)."""

    def __init__(self, path: Path, owner: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # noqa: SIM115 -- held open (and locked) for the life of the lock
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise Held(holder) from None
        fh.seek(0)
        fh.truncate()
        fh.write(owner)
        fh.flush()
        self._fh: IO[str] | None = fh

    def close(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class Held(Exception):
    """The lock is held by someone else: ``holder`` is what they wrote into the file."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder
