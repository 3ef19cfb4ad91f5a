"""Shared fixtures: tiny random-weight models built from configs (fast), and a CPU runtime."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture
def cpu_runtime():
    from greenknobs.runtime import Runtime

    return Runtime(device="cpu", cpu_count=len(os.sched_getaffinity(0)), gpu_count=0)


@pytest.fixture
def tiny_bert():
    from greenknobs import hf

    return hf.tiny_bert_classifier(num_labels=3, layers=4)


@pytest.fixture
def tiny_llama():
    from greenknobs import hf

    return hf.tiny_llama_lm(layers=4)
