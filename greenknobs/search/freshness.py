"""A study is only continued on the data, code and libraries it started with.

The first trial records what shaped its result on the study (``fingerprint``: the content digest
of every data file and model folder the trials read, the code digest, the library versions). A
later run of the same command compares: if anything changed under the same names, it refuses with
one line saying what and how to go on -- a fresh study (another experiment name), or continuing on
purpose (``--accept-changes``: recorded on the study, and the stored phase outputs are dropped, so
no model trained on the old data is served on the new).
"""

from __future__ import annotations

import datetime
from typing import Any

from greenknobs import fingerprint
from greenknobs.errors import GreenknobsError


def of(pipeline: Any, inputs: dict[str, str | None]) -> dict[str, Any]:
    code = pipeline.code_files()
    return {"inputs": dict(inputs), "code": fingerprint.code_digest(code),
            "libraries": fingerprint.library_versions(fingerprint.imports_of(code))}


def merged(recorded: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, Any]:
    """The study's fingerprint after a trial: inputs accumulate (a later trial may read more files)."""
    if not recorded:
        return now
    return {**recorded, "inputs": {**recorded.get("inputs", {}), **now["inputs"]}}


def changes(recorded: dict[str, Any], pipeline: Any) -> list[str]:
    """What is not as the study recorded it, in words."""
    out = fingerprint.changed(recorded.get("inputs", {}))
    code = pipeline.code_files()
    if recorded.get("code") and recorded["code"] != fingerprint.code_digest(code):
        out.append("the code (greenknobs, the pipeline or your modules)")
    libs_now = fingerprint.library_versions(fingerprint.imports_of(code))
    for dist, ver in sorted(recorded.get("libraries", {}).items()):
        if libs_now.get(dist, ver) != ver:
            out.append(f"{dist} {ver} -> {libs_now.get(dist)}")
    return out


def refusal(name: str, what: list[str]) -> GreenknobsError:
    listed = "; ".join(what[:4]) + (f"; and {len(what) - 4} more" if len(what) > 4 else "")
    return GreenknobsError(f"study {name!r} was started on other inputs: {listed} changed since. Start a fresh study "
                           f"(another experiment name, or remove runs/{name}), or continue on purpose with "
                           f"--accept-changes (recorded on the study; stored phase outputs are dropped)")


def acceptance(what: list[str]) -> dict[str, Any]:
    return {"at": datetime.datetime.now().isoformat(timespec="seconds"), "changed": what}
