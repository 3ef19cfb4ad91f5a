"""MLflow log records kept on local disk while the tracking server is unreachable, replayed in
order when it is back (tracking.py does the replaying; this module knows only files).

One spool per process: ``<folder>/<host>-<pid>-<token>.jsonl``, a journal of records (one JSON
object a line), held under an exclusive lock for the process's life, beside it the number of
records already replayed (``.done``), the run ids that replaced placeholders (``.ids.json``) and
copies of the files to upload (``.files/``). A spool whose lock can be taken belongs to a process
that is gone: the next tracker on this host adopts it and replays what is left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Spool:
    def __init__(self, path: Path, fh, records: list[dict[str, Any]], done: int, ids: dict[str, str]):
        self.path = path
        self._fh = fh  # open and locked: this process owns the spool
        self.records = records
        self.done = done
        self.ids = ids
        self._files = 0

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: Path) -> Spool:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}.jsonl"
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 -- held (and locked) while this process lives
        fcntl.flock(fh, fcntl.LOCK_EX)
        return cls(path, fh, [], 0, {})

    @classmethod
    def orphans(cls, folder: Path) -> Iterator[Spool]:
        """Spools in ``folder`` whose process is gone, each locked by us while it is yielded."""
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.jsonl")):
            try:
                fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 -- closed by the spool
            except OSError:
                continue
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its process is alive (perhaps this one)
                fh.close()
                continue
            spool = cls(path, fh, *_load(path))
            try:
                yield spool
            finally:
                spool.close()

    # -- writing ---------------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, default=str) + "\n")
        self._fh.flush()
        self.records.append(record)

    def keep_file(self, source: Path) -> Path:
        """A copy of a file to upload later (the original may change before the server is back)."""
        self._files += 1
        target = self._files_dir / f"{self._files:05d}" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        return target

    # -- replaying -------------------------------------------------------------------------------
    def next(self) -> dict[str, Any] | None:
        return self.records[self.done] if self.done < len(self.records) else None

    def advance(self) -> None:
        self.done += 1
        _write(self.path.with_suffix(".done"), str(self.done))

    def set_id(self, placeholder: str, run_id: str) -> None:
        self.ids[placeholder] = run_id
        _write(self.path.with_suffix(".ids.json"), json.dumps(self.ids))

    @property
    def pending(self) -> int:
        return len(self.records) - self.done

    def clear(self) -> None:
        """Everything was replayed: start empty (the file stays ours, locked)."""
        self._fh.truncate(0)
        self._fh.flush()
        self.records, self.done, self.ids, self._files = [], 0, {}, 0
        for extra in (self.path.with_suffix(".done"), self.path.with_suffix(".ids.json")):
            with contextlib.suppress(OSError):
                extra.unlink()
        shutil.rmtree(self._files_dir, ignore_errors=True)

    def close(self) -> None:
        """Release the spool; an empty one is removed, one with records left stays for adoption."""
        if self._fh.closed:
            return
        if not self.pending:
            self.clear()
            with contextlib.suppress(OSError):
                self.path.unlink()
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()

    @property
    def _files_dir(self) -> Path:
        return self.path.with_suffix(".files")


def _load(path: Path) -> tuple[list[dict[str, Any]], int, dict[str, str]]:
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut short when its process died: the records before it stand
                break
    try:
        done = int(path.with_suffix(".done").read_text())
    except (OSError, ValueError):
        done = 0
    try:
        ids = json.loads(path.with_suffix(".ids.json").read_text())
    except (OSError, ValueError):
        ids = {}
    return records, min(done, len(records)), ids


def _write(path: Path, text: str) -> None:
    """Replace a small file atomically (a crash leaves the old or the new one, never half)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
