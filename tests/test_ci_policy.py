"""CI cannot pass with suites skipped: under CI=true every skip (a skipif, a pytest.skip in a test
or a fixture) is a failure -- except a test marked ``gpu`` on a machine without a GPU -- while a
laptop run (no CI variable) still skips with the reason. Checked by running pytest on a small
suite that uses this repository's conftest.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

SUITE = '''
import pytest

@pytest.fixture
def service():
    pytest.skip("PostgreSQL is not installed")

@pytest.mark.skipif(True, reason="chromium is not installed")
def test_browser():
    pass

def test_needs_a_service(service):
    pass

def test_skips_itself():
    pytest.skip("shellcheck not installed")

@pytest.mark.gpu
def test_gpu_check():
    pytest.skip("no NVIDIA GPU here")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False

def test_runs():
    assert True
'''


def run_suite(tmp_path: Path, ci: str | None) -> tuple[int, str]:
    for name in ("conftest.py", "services_fixtures.py"):
        shutil.copy(HERE / name, tmp_path / name)
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs an NVIDIA GPU\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    return out.returncode, out.stdout + out.stderr


def counts(text: str) -> dict[str, int]:
    last = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped)", line)][-1]
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)", last)}


def test_on_a_laptop_tests_skip_with_their_reason(tmp_path):
    rc, text = run_suite(tmp_path, None)
    assert rc == 0, text
    assert counts(text) == {"passed": 1, "skipped": 4, "xfailed": 1}
    assert "chromium is not installed" in text and "PostgreSQL is not installed" in text


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_every_skip_fails_except_the_gpu_check_without_a_gpu(tmp_path, ci):
    from greenknobs.devices.nvml import probe_nvml

    rc, text = run_suite(tmp_path, ci)
    assert rc != 0, text
    got = counts(text)
    assert got.get("failed", 0) + got.get("error", 0) + got.get("errors", 0) == 3, text  # skipif, fixture, pytest.skip
    assert got["passed"] == 1 and got["xfailed"] == 1  # an expected failure is not a skip
    for name in ("test_browser", "test_needs_a_service", "test_skips_itself"):
        assert re.search(rf"(FAILED|ERROR) test_suite.py::{name}", text), text
    assert "skipped in CI (CI=true): Skipped: chromium is not installed" in text
    if probe_nvml().available:  # a GPU here: its check must run, so skipping it fails too
        assert re.search(r"(FAILED|ERROR) test_suite.py::test_gpu_check", text)
    else:
        assert got["skipped"] == 1 and "SKIPPED [1] test_suite.py" in text and "no NVIDIA GPU here" in text
