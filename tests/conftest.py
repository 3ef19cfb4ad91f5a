"""Shared fixtures: tiny random-weight models built from configs (fast), and a CPU runtime."""

from __future__ import annotations

import os

import pytest
from services_fixtures import *  # noqa: F403  (postgres, postgres_url, mlflow_server_url)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture
def cpu_runtime():
    from greenknobs.runtime import Runtime

    return Runtime(device="cpu", cpu_count=len(os.sched_getaffinity(0)), gpu_count=0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: thread hand-offs cost more than they save on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_bert():
    from greenknobs.ml import hf

    return hf.tiny_bert_classifier(num_labels=3, layers=4)


@pytest.fixture
def tiny_llama():
    from greenknobs.ml import hf

    return hf.tiny_llama_lm(layers=4)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT (random weights) with the real MiniLM tokenizer, saved like a hub model."""
    from greenknobs.testing.fixtures import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory):
    """90 short labelled texts in 3 topics; learnable by a tiny model in a few steps."""
    from greenknobs.testing.fixtures import make_tiny_csv

    return make_tiny_csv(tmp_path_factory.mktemp("data") / "texts.csv")


def write_experiment(tmp_path, model_dir, csv_path, **overrides):
    """Write the tiny experiment (greenknobs.testing.fixtures.tiny_experiment) to tmp_path/exp.yaml."""
    import yaml

    from greenknobs.testing.fixtures import tiny_experiment

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment(tmp_path, model_dir, csv_path, **overrides)))
    return path
