"""Nothing stale: a study continued on changed data is refused (one line) unless accepted on
purpose; a stored model trained on the old data is never served on the new; the phase store
running out of space turns reuse off and the search goes on; the inputs' digests reach MLflow."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from greenknobs.testing.fixtures import make_tiny_csv, tiny_experiment

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, model_dir: Path, csv_path: Path) -> Path:
    import yaml

    exp = tiny_experiment(tmp_path, model_dir, csv_path, budget={"trials": 2}, sampler="random",
                          knobs={"data.max_seq_len": 32, "system.threads": 1,
                                 "inference.batch_size": {"default": 32, "choices": [8, 32]},
                                 "training.learning_rate": 1e-3})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def search(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greenknobs", "search", str(path), *extra], capture_output=True,
                          text=True, cwd=path.parent, timeout=600)


def test_a_study_on_changed_data_is_refused_unless_accepted(tmp_path, tiny_model_dir):
    csv_path = make_tiny_csv(tmp_path / "texts.csv", per_topic=30)
    path = write(tmp_path, tiny_model_dir, csv_path)
    first = search(path, "--trials", "1")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    # the same file name, other texts (what the user did with a CSV of reviews)
    make_tiny_csv(csv_path, per_topic=25)
    refused = search(path, "--trials", "2")
    assert refused.returncode == 2, refused.stdout[-2000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert "texts.csv (content changed)" in line and "--accept-changes" in line and "Traceback" not in refused.stderr
    accepted = search(path, "--trials", "2", "--accept-changes")
    assert accepted.returncode == 0, accepted.stdout[-3000:] + accepted.stderr[-3000:]
    assert "continuing on purpose" in accepted.stdout and "reused from trial 0" not in accepted.stdout
    from greenknobs.config import load_experiment
    from greenknobs.search import open_study

    study = open_study(load_experiment(path), create=False)
    assert study.user_attrs["accepted_changes"][0]["changed"][0].endswith("texts.csv (content changed)")
    trial = max(study.get_trials(), key=lambda t: t.number)
    assert str(csv_path.resolve()) in trial.user_attrs["result"]["inputs"]


def test_a_full_disk_turns_reuse_off_and_the_trial_goes_on(tmp_path, monkeypatch):
    from greenknobs.phase_store import PhaseStore, StoreUnavailableWarning

    store = PhaseStore(tmp_path / "reuse")
    real = Path.write_bytes

    def full(self, data):
        if self.name == "context.pkl":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.warns(StoreUnavailableWarning, match="No space left"):
        assert store.publish("k" * 32, {"x": 1}, {}, {"trial": 0}) is False
    assert store.disabled and store.load("k" * 32) is None and not store.claim("k" * 32)


def test_a_trials_inputs_are_mlflow_datasets(tmp_path, tiny_model_dir):
    csv_path = make_tiny_csv(tmp_path / "texts.csv")
    path = write(tmp_path, tiny_model_dir, csv_path)
    assert search(path, "--trials", "1").returncode == 0
    from greenknobs.config import load_experiment
    from greenknobs.search import open_study
    from greenknobs.tracking import Tracker

    exp = load_experiment(path)
    run_id = open_study(exp, create=False).trials[0].user_attrs["mlflow_run_id"]
    run = Tracker(f"sqlite:///{tmp_path}/mlflow.db", exp.name).client.get_run(run_id)
    datasets = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    assert set(datasets) == {"texts.csv", tiny_model_dir.name}  # the data file and the model folder it read
    assert datasets["texts.csv"].source == str(csv_path.resolve())
    assert len(datasets["texts.csv"].digest) == 32 and '"splits"' in datasets["texts.csv"].profile
