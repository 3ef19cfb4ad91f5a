"""Riding out a database that went away: calls retried with backoff for a window, and a log of
every outage this process saw (when, how long, how many retries) for the search's summary.

The study's database is the search's source of truth, so a worker waits for it -- through a
restart or a fail-over -- rather than die with it; only an outage longer than the window stops
the worker, with one line (``ServiceOutage``). What may be retried is decided by the caller's
``transient`` test (coordination.is_connection_error for SQLAlchemy); which calls are safe to
repeat, by the storage (study.py).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from greenknobs.errors import ServiceOutage
from greenknobs.urls import mask_password

T = TypeVar("T")
DEFAULT_WINDOW_S = 120.0  # long enough for a PostgreSQL restart or a managed fail-over (typically 30-90 s)
FIRST_DELAY_S, MAX_DELAY_S = 0.25, 5.0


@dataclass
class Episode:
    """One outage as this process saw it: from the first failed call to the first call that worked."""

    service: str
    began: float  # time.time()
    ended: float | None = None
    retries: int = 0  # retries this outage took (every thread together)
    cause: str = ""  # the first error, one line

    @property
    def seconds(self) -> float:
        return (self.ended or time.time()) - self.began

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 2)}


class Retrier:
    """Retries calls that fail with a transient error, with jittered exponential backoff, for up
    to ``window_s`` from the call's first failure; then raises ServiceOutage naming ``service``
    and what the call was for. Re-entrant: a call made inside a retried call is not retried twice."""

    def __init__(self, service: str, transient: Callable[[BaseException], bool], window_s: float = DEFAULT_WINDOW_S):
        self.service = service
        self.transient = transient
        self.window_s = window_s
        self.episodes: list[Episode] = []
        self.listeners: list[Callable[[str], None]] = []  # one-line notes: went away, came back
        self._lock = threading.Lock()
        self._local = threading.local()
        self._open: Episode | None = None

    @property
    def retries(self) -> int:
        return sum(e.retries for e in self.episodes)

    def call(self, fn: Callable[[], T], what: str) -> T:
        if getattr(self._local, "depth", 0) or getattr(self._local, "at_once", False):
            return self._once(fn, what)
        self._local.depth = 1
        try:
            return self._retrying(fn, what)
        finally:
            self._local.depth = 0

    @contextlib.contextmanager
    def at_once(self) -> Iterator[None]:
        """Calls in this block fail at once (ServiceOutage) instead of waiting: for what can be
        skipped during an outage (a heartbeat, a janitor round, a progress record)."""
        before = getattr(self._local, "at_once", False)
        self._local.at_once = True
        try:
            yield
        finally:
            self._local.at_once = before

    def _once(self, fn: Callable[[], T], what: str) -> T:
        try:
            result = fn()
        except Exception as exc:
            if getattr(self._local, "depth", 0) or not self.transient(exc):
                raise
            self._failed(exc)
            raise ServiceOutage(f"{self.service}: unreachable ({_first_line(exc)}) while trying to {what}") from None
        self._worked()
        return result

    def _retrying(self, fn: Callable[[], T], what: str) -> T:
        first: float | None = None
        delay = FIRST_DELAY_S
        while True:
            try:
                result = fn()
            except Exception as exc:
                if not self.transient(exc):
                    raise
                now = time.monotonic()
                first = now if first is None else first
                episode = self._failed(exc)
                if now - first >= self.window_s:
                    raise ServiceOutage(
                        f"{self.service}: unreachable for {now - first:.0f} s (the retry window, --db-retry-s) while "
                        f"trying to {what}; last error: {_first_line(exc)}") from None
                with self._lock:
                    episode.retries += 1
                time.sleep(min(delay * random.uniform(0.8, 1.2), max(0.0, first + self.window_s - now)))
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            self._worked()
            return result

    def _failed(self, exc: BaseException) -> Episode:
        with self._lock:
            if self._open is None:
                self._open = Episode(self.service, time.time(), cause=_first_line(exc))
                self.episodes.append(self._open)
                opened = self._open
            else:
                return self._open
        self._tell(f"{self.service} unreachable ({opened.cause}): waiting up to {self.window_s:.0f} s for it")
        return opened

    def _worked(self) -> None:
        if self._open is None:  # the common case, without the lock
            return
        with self._lock:
            closed, self._open = self._open, None
            if closed is None:
                return
            closed.ended = time.time()
        self._tell(f"{self.service} back after {closed.seconds:.1f} s ({closed.retries} retries)")

    def _tell(self, message: str) -> None:
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):
                listener(message)


def _first_line(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None and cause.__cause__ is not None:  # the driver's words, not the wrapper's
        cause = cause.__cause__
    text = str(getattr(cause, "orig", None) or cause or exc).strip()
    return mask_password(" ".join(text.splitlines()[0].split())[:200]) if text else type(exc).__name__
