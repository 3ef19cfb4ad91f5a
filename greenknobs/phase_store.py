"""Phase-output reuse: a trial whose first phases would produce exactly what an earlier trial's
produced takes that trial's state from this store and runs only the phases after it.

Boundaries. The state is stored after the data phase (the tokenised splits), after the model
phase (the loaded, pruned model) and after training (the trained model): a trial that changes only
its inference knobs reuses the trained model and runs system and inference; one that changes only
training knobs reuses the pruned model. The system phase always runs again (it sets this
process's threads and compilation). The random generators' state is stored with each entry, so the
phases that run after a load continue exactly as they would have in one piece.

Keys. Each boundary's *output key* chains: the previous phase's key, the phase's name and its
knobs that affect output; the first link hashes the pipeline's code (its module and the library's
ml/ and knobs/ sources), options, data and model fingerprints, the seed and the library versions.
The *cost key* adds what changes the cost but not the output (the hardware, the meter, the
cost-only knobs: threads, dataloader workers, the power limit). An entry is reused only when both
match, so the energy attributed to the reused phases is what they cost under the same conditions;
the objectives use that *attributed* energy (the sampler must not learn that repeating is cheap),
while the search's own cost counts what was *spent* (the load).

The store lives under ``runs/<name>/reuse/``: one folder per entry (the pickled trial context,
the phase measurements, a manifest with a SHA-256), published by an atomic rename, so two
workers filling the same entry never corrupt it (the second's copy is dropped). A worker about to
build an entry claims it (a file with a lease); a claim whose lease ran out is taken over. A
corrupt entry (checksum or unpickling fails) is deleted and rebuilt. The store is bounded in
size: the least recently used entries go first. Entries are pickles: load only stores you wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from greenknobs.phases import Measurement, PhaseResult

FORMAT = 2
BOUNDARIES = ("data", "model", "training")  # phases after which the state is stored, shallowest first
NOT_PICKLED = ("meter", "teacher_loader", "apply_hook", "progress_check")


def digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class Entry:
    ctx: Any  # the trial context as the boundary phase left it
    rng: dict[str, Any] | None  # the random generators' state at that point (runtime.rng_state)
    phases: dict[str, PhaseResult]  # what the phases up to the boundary cost when they ran
    manifest: dict[str, Any]


class PhaseStore:
    def __init__(self, root: Path, max_bytes: int = 2 * 1024**3, lease_s: float = 3600.0):
        self.root = Path(root)
        self.max_bytes, self.lease_s = max_bytes, lease_s
        self.root.mkdir(parents=True, exist_ok=True)

    # -- reading -------------------------------------------------------------------------------------
    def _entry(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> Entry | None:
        """A published entry; None if absent or corrupt (a corrupt entry is deleted, so the trial
        rebuilds it)."""
        entry = self._entry(key)
        manifest_path = entry / "manifest.json"
        if not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            blob = (entry / "context.pkl").read_bytes()
            if manifest.get("format") != FORMAT or hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
                raise ValueError("checksum mismatch")
            payload = pickle.loads(blob)  # our own store, written by this module (see the module docstring)
            phases = {name: PhaseResult(name, Measurement(**p["measurement"]), p["details"])
                      for name, p in json.loads((entry / "phases.json").read_text()).items()}
        except Exception:  # truncated, tampered, or from another version: rebuild it
            shutil.rmtree(entry, ignore_errors=True)
            return None
        manifest["last_used"] = time.time()
        with contextlib.suppress(OSError):
            _atomic_write(manifest_path, json.dumps(manifest))
        return Entry(payload["ctx"], payload.get("rng"), phases, manifest)

    def load_deepest(self, keys: dict[str, str]) -> tuple[str, Entry] | None:
        """The deepest boundary of ``keys`` (boundary -> key) with a usable entry, and the entry."""
        for boundary in reversed(BOUNDARIES):
            if boundary in keys:
                entry = self.load(keys[boundary])
                if entry is not None:
                    return boundary, entry
        return None

    def has(self, key: str) -> bool:
        return (self._entry(key) / "manifest.json").is_file()

    # -- claiming and publishing ---------------------------------------------------------------------
    def _claim_is_live(self, path: Path) -> bool:
        """A claim holds while its lease runs and, on this host, while its process lives."""
        try:
            claim = json.loads(path.read_text())
            age = time.time() - claim["time"]
        except (OSError, ValueError, KeyError):
            return False  # unreadable: treat as abandoned
        if age > self.lease_s:
            return False
        if claim.get("host") == socket.gethostname() and claim.get("pid") != os.getpid():
            try:
                os.kill(int(claim["pid"]), 0)
            except ProcessLookupError:
                return False  # its process is gone (a crash): no need to wait out the lease
            except (PermissionError, ValueError):
                pass
        return True

    def claim(self, key: str) -> bool:
        """Claim the right to build ``key`` (False: built already, or a live claim by another worker)."""
        if self.has(key):
            return False
        path = self.root / f"{key}.claim"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                with os.fdopen(fd, "w") as fh:
                    fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}))
                return True
            except FileExistsError:
                if self._claim_is_live(path):
                    return False
                with contextlib.suppress(OSError):
                    path.unlink()  # abandoned: take it over
        return False

    def wait_for(self, key: str, poll_s: float = 1.0) -> bool:
        """While another worker holds a live claim on ``key``, wait for its entry (rather than
        build the same thing twice). True when the entry is there at the end."""
        path = self.root / f"{key}.claim"
        while not self.has(key) and path.exists() and self._claim_is_live(path):
            time.sleep(poll_s)
        return self.has(key)

    def release(self, key: str) -> None:
        """Drop this process's claim on ``key`` (never another's)."""
        path = self.root / f"{key}.claim"
        with contextlib.suppress(OSError, ValueError, KeyError):
            claim = json.loads(path.read_text())
            if claim.get("pid") == os.getpid() and claim.get("host") == socket.gethostname():
                path.unlink()

    def publish(self, key: str, ctx: Any, phases: dict[str, PhaseResult], info: dict[str, Any],
                rng: dict[str, Any] | None = None) -> bool:
        """Write the entry to a temporary folder and rename it into place (atomic): True when this
        call published it, False when another worker's copy was there first (ours is dropped)."""
        if self.has(key):
            self.release(key)
            return False
        saved = {name: getattr(ctx, name) for name in NOT_PICKLED if hasattr(ctx, name)}
        try:
            for name in saved:
                setattr(ctx, name, None)
            blob = pickle.dumps({"ctx": ctx, "rng": rng}, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            for name, value in saved.items():
                setattr(ctx, name, value)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            (tmp / "context.pkl").write_bytes(blob)
            (tmp / "phases.json").write_text(json.dumps(
                {name: {"measurement": asdict(p.measurement), "details": p.details} for name, p in phases.items()},
                default=str))
            manifest = {"format": FORMAT, "key": key, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
                        "created": time.time(), "last_used": time.time(), **info}
            (tmp / "manifest.json").write_text(json.dumps(manifest, default=str))
            try:
                os.rename(tmp, self._entry(key))
            except OSError:  # already published by another worker
                return False
            return True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            self.release(key)
            self.evict()

    # -- size bound ------------------------------------------------------------------------------------
    def evict(self) -> list[str]:
        """Drop least recently used entries until the store fits ``max_bytes``."""
        entries = []
        for manifest in self.root.glob("*/manifest.json"):
            try:
                m = json.loads(manifest.read_text())
                entries.append((m.get("last_used", 0.0), int(m.get("bytes", 0)), manifest.parent))
            except (OSError, ValueError):
                continue
        total, dropped = sum(b for _, b, _ in entries), []
        for _, size, folder in sorted(entries):
            if total <= self.max_bytes:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            dropped.append(folder.name)
        return dropped


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
