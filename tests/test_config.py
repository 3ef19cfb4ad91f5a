"""Experiment files: the shipped ones validate; every kind of bad input names its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from greenknobs.config import load_experiment, parse_experiment
from greenknobs.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def base() -> dict:
    return yaml.safe_load((ROOT / "experiments" / "bbc-news-minilm.yaml").read_text())


def test_default_experiment_is_valid():
    exp = load_experiment(ROOT / "experiments" / "bbc-news-minilm.yaml")
    assert exp.name == "bbc-news-minilm"
    assert exp.trials >= 12
    assert exp.objectives.energy_scope == "total" and exp.objectives.quality_metric == "macro_f1"
    assert exp.objectives.quality_direction == "maximize"
    assert exp.storage.startswith("sqlite:///runs/") and exp.mlflow_uri.startswith("sqlite:///runs/")
    baseline = exp.baseline_values()
    assert baseline["model.layers_removed"] == 0 and baseline["inference.quantization"] == "none"
    # every knob of the pipeline runs in every trial; unlisted ones are fixed at their baseline
    assert "system.threads" in baseline and not next(k for k in exp.knobs if k.name == "system.threads").searched
    # a knob fixed away from its catalog default travels with every recommendation's snippet
    assert exp.fixed_settings() == {"model.pruning_method": "block_influence"}


def test_a_grid_measures_every_point_unless_told_to_refuse_on_a_prediction():
    """The pre-start refusal (predicted dominated) is on by default, off by default for a grid."""
    assert parse_experiment(base()).stop_hopeless.before_start is True
    assert parse_experiment({**base(), "sampler": "grid"}).stop_hopeless.before_start is False
    told = {**base(), "sampler": "grid", "stop_hopeless": {"before_start": True}}
    assert parse_experiment(told).stop_hopeless.before_start is True
    assert parse_experiment({**base(), "sampler": "grid", "stop_hopeless": True}).stop_hopeless.before_start is False


def test_quick_variant_is_a_separate_smaller_study():
    exp = load_experiment(ROOT / "experiments" / "bbc-news-minilm.yaml")
    quick = exp.quick_variant()
    assert quick.name == "bbc-news-minilm-quick" and quick.trials < exp.trials
    assert quick.pipeline_options["max_examples"] == 600


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d.update(colour="green"), "colour"),
    (lambda d: d["knobs"].update({"data.nonsense": {"default": 1}}), "knobs.data.nonsense"),
    (lambda d: d["knobs"]["data.max_seq_len"].update(choices="64"), "knobs.data.max_seq_len.choices"),
    (lambda d: d["knobs"]["data.max_seq_len"].update(default=256), "knobs.data.max_seq_len.default"),
    (lambda d: d["knobs"]["data.train_fraction"].update(default=1.5), "knobs.data.train_fraction.default"),
    (lambda d: d["knobs"]["inference.quantization"].update(choices=["none", "int3"]), "knobs.inference.quantization.choices"),
    (lambda d: d["knobs"]["model.layers_removed"].update(high=-1), "knobs.model.layers_removed.high"),
    (lambda d: d["knobs"]["training.learning_rate"].update(low=0.0), "knobs.training.learning_rate.low"),
    (lambda d: d["knobs"]["training.epochs"].update(step="x", log=True), "knobs.training.epochs.step"),
    (lambda d: d["knobs"]["training.epochs"].update(colour=1), "knobs.training.epochs.colour"),
    (lambda d: d.update(budget={"trials": 0}), "budget.trials"),
    (lambda d: d.update(budget={"trials": "ten"}), "budget.trials"),
    (lambda d: d.update(sampler="bayes"), "sampler"),
    (lambda d: d.update(stop_hopeless={"below_floor": "yes"}), "stop_hopeless.below_floor"),
    (lambda d: d.update(stop_hopeless={"at_fraction": 1.0}), "stop_hopeless.at_fraction"),
    (lambda d: d.update(objectives={"energy": "gpu"}), "objectives.energy"),
    (lambda d: d.update(objectives={"quality": "bleu"}), "objectives.quality"),
    (lambda d: d.update(constraints={"min_quality_retained": 1.5}), "constraints.min_quality_retained"),
    (lambda d: d.update(meter={"name": "wattmeter"}), "meter.name"),
    (lambda d: d.update(carbon={"country_iso_code": "UK"}), "carbon.country_iso_code"),
    (lambda d: d.update(storage="runs/optuna.db"), "storage"),
    (lambda d: d["pipeline"].update(split={"train": 0.8, "validation": 0.1, "test": 0.2}), "pipeline.split"),
    (lambda d: d["pipeline"].update(model="/nonexistent/model"), "pipeline.model"),
    (lambda d: d["pipeline"].update(dataset={"path": "x.csv", "sep": ";"}), "pipeline.dataset.sep"),
    (lambda d: d["pipeline"].update(name="no-such-pipeline"), "pipeline.name"),
    (lambda d: d["pipeline"].update(batch=3), "pipeline.batch"),
    (lambda d: d.update(quick={"trials": 0}), "quick.trials"),
    (lambda d: d.update(name="bad name!"), "name"),
])
def test_bad_experiment_names_the_key(mutate, key):
    raw = base()
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse_experiment(raw, "bad.yaml")
    assert err.value.key == key, str(err.value)


def test_user_dataset_file_missing_column(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\nhello,a\n")
    raw = base()
    raw["pipeline"]["dataset"] = {"path": str(csv), "text_column": "body"}
    exp = parse_experiment(raw, "x.yaml")  # columns are checked when the data phase reads the file
    from pipelines.text_data import load_table

    with pytest.raises(ConfigError) as err:
        load_table(str(csv), "body", "label")
    assert err.value.key == "pipeline.dataset.text_column"
    assert exp.pipeline_options["dataset"]["path"] == str(csv)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greenknobs.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_validate_bad_file_is_one_line_exit_2(tmp_path):
    raw = base()
    raw["knobs"]["model.layers_removed"]["high"] = "four"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    proc = _cli("validate", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("greenknobs: error:")]
    assert len(lines) == 1 and "knobs.model.layers_removed.high" in lines[0]


def test_cli_validate_broken_yaml(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\nknobs: [unclosed\n")
    proc = _cli("validate", str(bad))
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_validate_good_file():
    proc = _cli("validate", "experiments/bbc-news-minilm.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_an_experiment_that_searches_nothing_runs_the_baseline_only():
    """A fixed knob alone (or none) is a measurement of the baseline, not an error."""
    raw = base()
    raw["knobs"] = {"data.max_seq_len": 64}
    exp = parse_experiment(raw, "fixed.yaml")
    assert not exp.searched_knobs and exp.trials == 1
