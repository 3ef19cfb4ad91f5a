"""Meters are registrable like pipelines: the built-in ones under the ``greenknobs.meters``
entry-point group, a user's as ``module:Class`` in ``meter.name`` -- used by a real (tiny) search;
a bad path is one line naming ``meter.name``."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from greenknobs.config import load_experiment, parse_experiment
from greenknobs.errors import ConfigError
from greenknobs.meters import create_meter, meter_table
from greenknobs.meters.registry import BUILTIN, ENTRY_POINT_GROUP
from greenknobs.search import Search
from greenknobs.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def standin(tmp_path: Path, meter) -> dict:
    return {
        "name": "own-meter",
        "pipeline": {"name": "greenknobs.testing.standin:SleepPipeline", "phase_s": 0.02},
        "knobs": {"standin.width": {"class": "greenknobs.testing.standin:Width", "default": 4, "choices": [2, 4]},
                  "standin.depth": {"class": "greenknobs.testing.standin:Depth", "default": 8, "low": 4, "high": 8}},
        "constraints": {"min_quality_retained": 0.1, "beat_trivial_by": None},
        "budget": {"trials": 3}, "sampler": "random", "meter": meter,
        "storage": f"sqlite:///{tmp_path}/optuna.db", "mlflow_uri": f"sqlite:///{tmp_path}/mlflow.db",
    }


def test_the_built_in_table_is_what_pyproject_registers():
    """The fallback table (for installs whose metadata predates the group) and the entry points agree."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][ENTRY_POINT_GROUP] == BUILTIN
    assert {row["meter"] for row in meter_table()} >= set(BUILTIN)


def test_a_users_meter_named_in_the_experiment_measures_a_search(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(standin(tmp_path, {"name": "user_meters:WallClockMeter", "params": {"watts": 7}})))
    exp = load_experiment(path)
    assert type(create_meter(exp.meter.name, exp.meter.params)).__name__ == "WallClockMeter"
    tracker = Tracker(exp.mlflow_uri, exp.name)
    try:
        outcome = Search(exp, tracker).run()
    finally:
        tracker.end_study()
    done = [t for t in outcome.study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    for t in done:
        summary, phases = t.user_attrs["summary"], t.user_attrs["result"]["phases"]
        assert summary["meter"] == "wall-clock" and summary["meter_params"] == {"watts": 7.0}
        for p in phases.values():  # 7 W x the phase's own wall time: the figures are the user's meter's
            assert p["energy_j"] == pytest.approx(7.0 * p["time_s"], rel=1e-6)
    run = tracker.client.get_run(done[0].user_attrs["mlflow_run_id"])
    assert run.data.tags["meter"] == "wall-clock" and run.data.tags["meter_param.watts"] == "7.0"


@pytest.mark.parametrize("name, says", [
    ("user_meters:NoSuchMeter", "cannot import 'user_meters:NoSuchMeter'"),
    ("no_such_module_here:Meter", "cannot import 'no_such_module_here:Meter'"),
    ("user_meters:NotAMeter", "is not a greenknobs EnergyMeter"),
    ("user_meters:", "expected 'package.module:ClassName'"),
    ("wattmeter", "unknown meter 'wattmeter'"),
])
def test_a_bad_meter_name_is_one_line_naming_the_key(tmp_path, name, says):
    with pytest.raises(ConfigError, match="^meter.name: ") as err:
        parse_experiment(standin(tmp_path, {"name": name}))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_users_meter_parameters_are_checked_like_a_built_in_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"^meter.params.volts: unknown key; expected one of: watts$"):
        parse_experiment(standin(tmp_path, {"name": "user_meters:WallClockMeter", "params": {"volts": 3}}))


def test_validate_says_it_in_one_line_with_exit_2(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(standin(tmp_path, {"name": "user_meters:NoSuchMeter"})))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "greenknobs", "validate", str(path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "greenknobs: error: meter.name: cannot import 'user_meters:NoSuchMeter': module 'user_meters' has no "
        "attribute 'NoSuchMeter'"]
