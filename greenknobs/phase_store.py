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
cost-only knobs: threads, dataloader workers, the power limit; the number of greenknobs workers
on the host). An entry is reused only when both match, so the energy attributed to the reused
phases is what they cost under the same conditions. A phase measured while other processes
contended for the CPUs keeps that mark in the entry, so every trial it is reused in shows it
(the report's contention badge) -- refusing such entries would end reuse on any busy laptop;
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
import errno
import hashlib
import json
import os
import pickle
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from greenknobs.phases import Measurement, PhaseResult

FORMAT = 3  # 3: define-by-run payloads {ctx, outputs, handed}
BOUNDARIES = ("data", "model", "training")  # phases after which the state is stored, shallowest first
PHASE_INDEX = {p: i for i, p in enumerate(("data", "model", "system", "training", "inference"))}


def digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class Entry:
    ctx: Any  # what the trial stored at the boundary: {"ctx", "outputs", "handed"} (Trial.storable)
    rng: dict[str, Any] | None  # the random generators' state at that point (runtime.rng_state)
    phases: dict[str, PhaseResult]  # what the phases up to the boundary cost when they ran
    manifest: dict[str, Any]


class PhaseStore:
    def __init__(self, root: Path, max_bytes: int = 2 * 1024**3, lease_s: float = 3600.0):
        self.root = Path(root)
        self.max_bytes, self.lease_s = max_bytes, lease_s
        self.disabled: str | None = None  # why reuse is off (a full disk, a read-only folder); the search goes on
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".writable.{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            self.disable(exc)

    def disable(self, exc: OSError) -> None:
        """Stop storing and loading: the folder cannot be written (full, read-only). Said once."""
        if self.disabled is None:
            self.disabled = f"{self.root}: {exc.strerror or exc}"
            warnings.warn(f"phase-output reuse is off for this search: cannot write {self.disabled} "
                          "(trials run in full; nothing else changes)", StoreUnavailableWarning, stacklevel=2)

    # -- reading -------------------------------------------------------------------------------------
    def _entry(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> Entry | None:
        """A published entry; None if absent or corrupt (a corrupt entry is deleted, so the trial
        rebuilds it)."""
        if self.disabled:
            return None
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
        return not self.disabled and (self._entry(key) / "manifest.json").is_file()

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
        if self.disabled or self.has(key):
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
        if self.disabled or self.has(key):
            self.release(key)
            return False
        blob = pickle.dumps({"ctx": ctx, "rng": rng}, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        except OSError as exc:
            self.disable(exc)
            return False
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
        except OSError as exc:  # the disk filled up, the folder turned read-only: reuse goes off
            if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM):
                self.disable(exc)
                return False
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            self.release(key)
            self.evict()

    def clear(self) -> None:
        """Drop every entry (the data or code they were built from changed, on purpose)."""
        for entry in self.root.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)

    def size_bytes(self) -> int:
        total = 0
        for manifest in self.root.glob("*/manifest.json"):
            with contextlib.suppress(OSError, ValueError):
                total += int(json.loads(manifest.read_text()).get("bytes", 0))
        return total

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


class StoreUnavailableWarning(UserWarning):
    """The phase store cannot be written (full disk, read-only folder): reuse is off, the search goes on."""


class ReuseSession:
    """One trial's use of the store, as hooks around its phases (``greenknobs.trial`` calls them):

    ``begin(trial)``    before the first phase: wait for a combination another worker is building,
                        then load the deepest stored boundary and hand its state to the trial;
    ``restore(phase)``  a phase covered by that entry returns its stored output and the energy
                        building it cost (attributed) -- except ``system``, which sets up this
                        process and always runs;
    ``ran(phase)``      after a boundary phase ran: store the state (outputs so far, the trial's
                        context and evidence, the objects handed over, the random generators);
    ``end()``           release this worker's claim when the trial failed before its training ended.
    """

    def __init__(self, store: PhaseStore, keys: dict[str, str], meter: Any, info: dict[str, Any]):
        self.store, self.keys, self.meter, self.info = store, keys, meter, info
        self.status: dict[str, Any] = {"status": "built", "published": {}, "publish_j": 0.0}
        self._entry: Entry | None = None
        self._boundary: str | None = None

    def begin(self, trial: Any) -> None:
        waited = time.monotonic()
        if self.store.wait_for(self.keys["training"]):  # another worker is training this very combination
            self.status["waited_s"] = time.monotonic() - waited
        with self.meter.window("reuse.load") as load:
            found = self.store.load_deepest(self.keys)
        self.status["load_j"] = load.measurement.energy_j
        self.status["load_provenance"] = load.measurement.provenance
        if found is not None:
            self._boundary, self._entry = found
            payload = self._entry.ctx
            trial.adopt(payload["ctx"], payload.get("handed", {}), payload.get("outputs", {}))
            from greenknobs.runtime import set_rng_state

            if self._entry.rng is not None:
                set_rng_state(self._entry.rng)
            reused = [p for p in self._entry.phases if p != "system"]
            self.status.update(status="reused", boundary=self._boundary, phases=reused, key=self.keys[self._boundary],
                               from_trial=self._entry.manifest.get("trial"))
        if "training" in self.keys and not self._covers("training") and not self.store.claim(self.keys["training"]):
            self.status["training_entry"] = "claimed by another worker meanwhile: both build it, one copy is kept"

    def _covers(self, phase: str) -> bool:
        return self._entry is not None and phase in self._entry.phases and phase != "system"

    def restore(self, phase: str, trial: Any) -> tuple[Any, PhaseResult] | None:
        if not self._covers(phase):
            return None
        assert self._entry is not None
        stored = self._entry.phases[phase]
        last = [p for p in self._entry.phases if p != "system"][-1]
        details = {**stored.details, "reused": {"from_trial": self._entry.manifest.get("trial"), "key": self.keys[self._boundary or phase]},
                   "spent_j": self.status["load_j"] if phase == last else 0.0}
        return trial.stored_output(phase), PhaseResult(phase, stored.measurement, details)

    def ran(self, phase: str, trial: Any) -> None:
        if phase not in BOUNDARIES or phase not in self.keys:
            return
        key = self.keys[phase]
        if self.store.has(key):
            return
        from greenknobs.runtime import rng_state

        state = rng_state()  # taken before anything else can draw from the generators
        done = {p: r for p, r in trial.results.items() if PHASE_INDEX.get(p, 99) <= PHASE_INDEX[phase]}
        with self.meter.window(f"reuse.publish.{phase}") as pub:
            try:
                with trial.storable() as payload:
                    outcome: bool | str = self.store.publish(key, payload, done, {**self.info, "boundary": phase}, rng=state)
            except Exception as exc:  # e.g. a compiled model or a lambda in an output: the trial goes on, unstored
                self.store.release(key)
                outcome = f"not stored: {type(exc).__name__}: {exc}"
        self.status["published"][phase] = outcome
        self.status["publish_j"] += pub.measurement.energy_j

    def end(self) -> None:
        if "training" in self.keys and "training" not in self.status["published"]:
            self.store.release(self.keys["training"])  # failed before its training finished: let others build it
