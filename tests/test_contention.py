"""Neighbours' load beside every window: others' CPU-seconds and steal on this process's CPUs, a
phase marked when it was measured under contention, a repeatable phase measured again, and OpenMP
threads that sleep instead of spinning while they wait (set before torch loads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenknobs.meters import host_load, noise
from greenknobs.meters.host_load import HostSample, between, contended
from greenknobs.phases import MODELLED, Measurement

ROOT = Path(__file__).resolve().parents[1]


def s(t, busy, steal=0.0, own=0.0, cpus=2):
    return HostSample(t, busy, steal, own, cpus, 1.0)


def test_others_are_the_busy_cpu_seconds_that_are_not_ours():
    load = between(s(0.0, 100.0, 1.0, 10.0), s(10.0, 125.0, 2.0, 25.0))
    assert load["own_cpu_s"] == 15.0 and load["others_cpu_s"] == 10.0 and load["steal_s"] == 1.0
    assert load["others_cores"] == 1.0 and load["own_cores"] == 1.5 and load["steal_cores"] == 0.1
    assert load["contended"] is True
    quiet = between(s(0.0, 100.0, 0.0, 10.0), s(10.0, 121.0, 0.0, 30.0))  # 1 CPU-s of others over 10 s
    assert quiet["others_cores"] == pytest.approx(0.1) and quiet["contended"] is False
    assert between(None, s(1.0, 1.0)) is None


def test_contention_needs_others_and_full_cpus():
    assert contended(1.0, 0.0, 1.0, cpus=2)  # a neighbour's core and ours fill both CPUs
    assert contended(0.3, 0.3, 1.5, cpus=2)  # steal counts as others
    assert not contended(0.4, 0.0, 1.9, cpus=2)  # a little background noise
    assert not contended(10.0, 0.0, 2.0, cpus=64)  # neighbours on a big host's other cores do not contend


class FakeMeter:
    """A meter whose windows report scripted joules; ``begin`` hooks run at each window start."""

    name, provenance, resolution_s = "fake", MODELLED, 0.0

    def __init__(self, joules):
        self.joules = list(joules)

    def window(self, key):
        from contextlib import contextmanager

        from greenknobs.meters.base import WindowResult

        @contextmanager
        def cm():
            r = WindowResult()
            yield r
            e = self.joules.pop(0)
            r.measurement = Measurement(e, 1.0, MODELLED, self.name, {"cpu": {"energy_j": e, "provenance": MODELLED}})
        return cm()


@pytest.fixture
def scripted_load(monkeypatch):
    """host_load.between returns the next scripted verdict, one per window."""
    script: list[bool] = []

    def fake_between(a, b):
        busy = script.pop(0)
        return {"wall_s": 1.0, "cpus": 2, "own_cpu_s": 1.0, "others_cpu_s": 1.5 if busy else 0.0, "steal_s": 0.0,
                "own_cores": 1.0, "others_cores": 1.5 if busy else 0.0, "steal_cores": 0.0,
                "loadavg_1m": [1.0, 1.0], "contended": busy}

    monkeypatch.setattr(host_load, "sample", lambda: s(time.perf_counter(), 0.0))
    monkeypatch.setattr(host_load, "between", fake_between)
    return script


def test_a_contended_repeatable_phase_is_measured_again_and_the_clean_window_kept(scripted_load):
    scripted_load += [True, False]
    calls = []
    m, details = noise.measure_phase(FakeMeter([30.0, 10.0]), "inference", lambda: calls.append(1), repeatable=True)
    assert m.energy_j == 10.0 and len(calls) == 2  # the contended 30 J window was left out
    assert details["energy_j_runs"] == [30.0, 10.0] and len(details["host_load"]) == 2
    assert details["contended"] is False and details["contention"].startswith("re-measured: 1 contended window")


def test_a_phase_contended_every_time_is_marked_with_what_was_tried(scripted_load):
    scripted_load += [True, True, True]
    m, details = noise.measure_phase(FakeMeter([30.0, 31.0, 29.0]), "inference", lambda: None, repeatable=True,
                                     contention_retries=2)
    assert details["contended"] is True and "still contended after 2 more window(s)" in details["contention"]
    assert m.repeats == 1 and m.energy_j == 30.0  # the window asked for, marked; the others listed
    assert details["energy_j_runs"] == [30.0, 31.0, 29.0]


def test_a_contended_training_phase_is_marked_not_repeated(scripted_load):
    scripted_load += [True]
    calls = []
    m, details = noise.measure_phase(FakeMeter([50.0]), "training", lambda: calls.append(1), repeatable=False)
    assert len(calls) == 1 and m.energy_j == 50.0
    assert details["contended"] is True and "not repeatable" in details["contention"]
    assert "others 1.50 cores" in details["contention"]


def test_an_uncontended_phase_is_measured_once(scripted_load):
    scripted_load += [False]
    m, details = noise.measure_phase(FakeMeter([10.0]), "inference", lambda: None, repeatable=True)
    assert details["contended"] is False and "contention" not in details and m.repeats == 1


def detached_hog() -> int:
    """A busy loop that is not this process's descendant (a neighbour, not part of our tree): its pid."""
    out = subprocess.run(["sh", "-c", f"'{sys.executable}' -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, timeout=30)
    return int(out.stdout.strip())


def test_a_window_too_short_for_the_tick_counters_is_recorded_but_never_marked():
    """One stray 10 ms tick in a 20 ms window reads as half a core of neighbours: not a verdict."""
    blip = between(s(0.0, 100.0, 0.0, 0.0), s(0.02, 100.05, 0.0, 0.01))
    assert blip["others_cores"] == 2.0 and blip["contended"] is False
    long = between(s(0.0, 100.0, 0.0, 0.0), s(2.0, 104.0, 0.0, 1.0))
    assert long["others_cores"] == 1.5 and long["contended"] is True


def test_a_real_cpu_hog_marks_the_window_contended():
    """Busy loops on every CPU this process may use, while it sleeps: the window sees them as others' load."""
    cpus = len(os.sched_getaffinity(0))
    hogs = []
    try:
        hogs = [detached_hog() for _ in range(cpus)]
        time.sleep(0.3)
        before = host_load.sample()
        time.sleep(1.5)
        load = between(before, host_load.sample())
    finally:
        for pid in hogs:
            os.kill(pid, 9)
    assert load is not None and load["others_cores"] > 0.6 * cpus and load["own_cores"] < 0.2
    assert load["contended"] is True


def _policy(code: str, env: dict[str, str] | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | (env or {})
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, os\nfrom greenknobs.runtime import process_state, "
                          "prefer_passive_thread_waits as p\nprint(json.dumps({'env': os.environ.get('OMP_WAIT_POLICY'), "
                          "'state': process_state().get('omp_wait_policy'), **p()}))"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_greenknobs_makes_waiting_openmp_threads_sleep_before_torch_loads():
    first = _policy("import greenknobs\nimport torch")
    assert first["env"] == "PASSIVE" and first["state"] == "PASSIVE" and "before torch loaded" in first["how"]
    late = _policy("import torch\nimport greenknobs")  # too late to matter: said so, nothing changed
    assert late["env"] is None and late["state"] == "runtime default" and "torch was loaded before" in late["how"]
    user = _policy("import greenknobs\nimport torch", {"OMP_WAIT_POLICY": "ACTIVE"})
    assert user["env"] == "ACTIVE" and user["state"] == "ACTIVE" and user["how"] == "set by the user"
