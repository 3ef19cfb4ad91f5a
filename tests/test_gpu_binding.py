"""One worker, one GPU (against a fake NVML; no real GPU is touched): bound by UUID, exclusive,
measured by UUID although NVML ignores CUDA_VISIBLE_DEVICES, and a trial fails when another
process shows up on the GPU."""

from __future__ import annotations

import os
import time

import pytest
import yaml

from greenknobs.errors import GreenknobsError
from greenknobs.testing.fakes import FakeGpu, install_fake_nvml


@pytest.fixture
def gpus(monkeypatch, tmp_path):
    from greenknobs.devices import gpu

    monkeypatch.setattr(gpu, "LOCK_DIR", tmp_path / "locks")
    fakes = [FakeGpu(100.0), FakeGpu(300.0)]
    forbidden = install_fake_nvml(monkeypatch, fakes)
    yield fakes
    for g in fakes:
        gpu.release(g.uuid)
    assert forbidden == []  # nothing ever set a limit, a clock or a mode


def test_a_worker_binds_one_gpu_by_uuid_exclusively(gpus, monkeypatch):
    from greenknobs.devices import gpu
    from greenknobs.meters.nvml import NvmlMeter

    bound = gpu.bind("1")
    assert bound["uuid"] == gpus[1].uuid and bound["index"] == 1
    assert os.environ["CUDA_VISIBLE_DEVICES"] == gpus[1].uuid  # CUDA sees only it, as device 0
    with pytest.raises(GreenknobsError, match="already bound.*one worker per GPU"):
        gpu.bind(gpus[1].uuid)
    meter = NvmlMeter(synchronize=None)  # NVML ignores CUDA_VISIBLE_DEVICES: the meter resolves the UUID
    with meter.window("w") as w:
        time.sleep(0.1)
    meter.close()
    per = w.measurement.components["gpu"]["per_device_j"]
    assert set(per) == {"gpu1"} and per["gpu1"] / w.measurement.time_s == pytest.approx(300.0, rel=0.15)
    gpu.release(bound["uuid"])
    assert gpu.bind(gpus[1].uuid)["uuid"] == gpus[1].uuid  # free again once released


def test_foreign_processes_are_noticed(gpus):
    from greenknobs.devices import gpu

    gpus[0].processes = [os.getpid()]
    assert gpu.foreign_processes(gpus[0].uuid) == []  # this worker itself
    gpus[0].processes.append(1)  # init, certainly not ours
    assert gpu.foreign_processes(gpus[0].uuid) == [1]


def test_a_trial_fails_when_another_process_uses_its_gpu(gpus, tmp_path, monkeypatch):
    from greenknobs.config import load_experiment
    from greenknobs.search import Search
    from greenknobs.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GREENKNOBS_LOCK_DIR", str(tmp_path / "workers"))
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bound", "pipeline": {"name": "greenknobs.testing.standin:SleepPipeline", "phase_s": 0.01},
        "knobs": {"standin.width": {"class": "greenknobs.testing.standin:Width", "default": 4, "choices": [2, 4]}},
        "budget": {"trials": 1}, "sampler": "random", "meter": "cpu-model", "device": "cpu",
        "storage": f"sqlite:///{tmp_path}/optuna.db", "mlflow_uri": f"sqlite:///{tmp_path}/mlflow.db"}))
    exp = load_experiment(path)
    gpus[0].processes = [1]
    tracker = Tracker(exp.mlflow_uri, exp.name)
    with pytest.raises(GreenknobsError, match="baseline trial failed"):
        Search(exp, tracker, gpu="0").run()
    from greenknobs.search.study import open_study

    trial = open_study(exp, create=False).trials[0]
    assert "ran on GPU" in trial.user_attrs["fail_reason"] and "cannot be attributed" in trial.user_attrs["fail_reason"]
