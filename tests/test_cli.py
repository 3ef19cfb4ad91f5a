"""The CLI's listing commands and the MLflow UI over a local store."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def gk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greenknobs.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_knobs_lists_every_phase_with_what_it_verifies():
    rows = json.loads(gk("knobs", "--json").stdout)
    assert {r["phase"] for r in rows} == {"data", "model", "system", "training", "inference"}
    for r in rows:
        assert r["verifies"] and r["space"] and r["devices"] and "default" in r
    text = gk("knobs").stdout
    assert "model.layers_removed" in text and f"{len(rows)} knobs" in text


def test_meters_says_what_is_available_and_why_not():
    rows = {r["meter"]: r for r in json.loads(gk("meters", "--json").stdout)}
    assert rows["cpu-model"]["available"] is True and rows["cpu-model"]["provenance"] == "modelled"
    for r in rows.values():
        assert r["available"] or r["reason"], r  # an unavailable meter always says why


def test_pareto_without_a_study_is_a_clear_error(tmp_path):
    proc = gk("pareto", "experiments/bbc-news-minilm.yaml", "--storage", f"sqlite:///{tmp_path}/none.db")
    assert proc.returncode == 2 and "no study" in proc.stderr and "Traceback" not in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_store_on_loopback_and_stops_with_its_command(tmp_path):
    """SIGTERM to `greenknobs ui` stops the MLflow server it started (the old one kept the port)."""
    import os
    import signal

    from greenknobs.processes import port_open

    port = _free_port()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    from greenknobs.tracking import Tracker

    Tracker(uri, "ui-check")  # creates the store and an experiment to show
    proc = subprocess.Popen([sys.executable, "-m", "greenknobs", "ui", "--mlflow-uri", uri, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path, text=True)
    try:
        deadline = time.time() + 90
        body = None
        while time.time() < deadline and body is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
                                             data=b'{"max_results": 10}', headers={"Content-Type": "application/json"})
                body = json.loads(urllib.request.urlopen(req, timeout=5).read())
            except OSError:
                time.sleep(1)
        assert body is not None, "MLflow UI did not answer"
        assert "ui-check" in {e["name"] for e in body["experiments"]}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    time.sleep(0.5)
    assert not port_open("127.0.0.1", port), "the MLflow server outlived `greenknobs ui`"
    leftovers = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True).stdout.split()
    assert not leftovers, f"processes still serving port {port}: {leftovers}"


def test_the_console_tells_a_stopped_trial_from_a_failed_one(capsys):
    from greenknobs.cli import ConsoleReporter

    reporter = ConsoleReporter("macro_f1")
    reporter.trial_done(3, None, "after 50% of training, too far from the floor", 5, None, stopped=True)
    reporter.trial_done(4, None, "RuntimeError: out of memory", 4, None)
    reporter.trial_done(5, None, "IncompatibleKnobs: int8 with bf16", 3, None, infeasible=True)
    out = capsys.readouterr().out.splitlines()
    assert out == ["    STOPPED early: after 50% of training, too far from the floor  [5 left]",
                   "    FAILED: RuntimeError: out of memory  [4 left]",
                   "    INFEASIBLE, not started: IncompatibleKnobs: int8 with bf16  [3 left]"]
