"""Shared fixtures: tiny random-weight models built from configs (fast), and a CPU runtime.

In CI (``CI=true``) a skipped test is a failure: a suite that cannot run there (PostgreSQL, Chromium
or shellcheck missing, a fixture that gave up) must not pass as green. The one exception is a test
marked ``gpu`` on a machine without an NVIDIA GPU. On a laptop (no CI variable) tests skip with
their reason, as before.
"""

from __future__ import annotations

import os

import pytest
from services_fixtures import *  # noqa: F403  (postgres, postgres_url, mlflow_server_url)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _has_gpu() -> bool:
    from greenknobs.devices.nvml import probe_nvml

    return probe_nvml().available


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def may_skip_in_ci(item) -> bool:
    """Only the GPU check on a machine without a GPU may skip in CI."""
    return item.get_closest_marker("gpu") is not None and not _has_gpu()


def _fail_skip(report, what: str) -> None:
    reason = _skip_reason(report)
    report.outcome = "failed"
    report.longrepr = (f"{what} skipped in CI (CI=true): {reason}\nCI must run every suite: install what it needs "
                       "(.ci/run fails when it cannot), or mark a test `gpu` if it needs an NVIDIA GPU.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail") and not may_skip_in_ci(item):
        _fail_skip(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped:  # a whole module skipped at import (pytest.skip(allow_module_level=True))
        _fail_skip(report, collector.nodeid)


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
