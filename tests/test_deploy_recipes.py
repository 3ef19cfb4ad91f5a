"""The cluster recipes in deploy/: a Slurm array job and a Kubernetes Job, one GPU per worker, the same
`greenknobs search` command against a shared PostgreSQL study and MLflow server, and no secret in them."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SBATCH = DEPLOY / "slurm" / "greenknobs-workers.sbatch"
JOB = DEPLOY / "k8s" / "greenknobs-workers.yaml"


# -- Slurm ---------------------------------------------------------------------------------------
def sbatch_options() -> dict[str, str]:
    """The #SBATCH options Slurm reads: those before the first command (later ones are ignored)."""
    options = {}
    for line in SBATCH.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            option = stripped.split(None, 1)[1].split("#")[0].strip()
            name, _, value = option.partition("=")
            options[name] = value
        elif stripped and not stripped.startswith("#"):
            break
    return options


def test_sbatch_is_valid_bash():
    assert SBATCH.read_text().startswith("#!/bin/bash\n")
    out = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_sbatch_options():
    options = sbatch_options()
    assert options.get("--gres") == "gpu:1", "one GPU per array task"
    assert re.fullmatch(r"0-\d+", options.get("--array", "")), "an array job: --array=0-N"
    assert options.get("--ntasks") == "1"
    assert re.fullmatch(r"B:INT@\d+", options.get("--signal", "")), "Ctrl-C to the worker before the time limit"
    body = SBATCH.read_text()
    # every #SBATCH line is read by Slurm: none hides after the first command
    first_command = next(i for i, line in enumerate(body.splitlines())
                         if line.strip() and not line.strip().startswith("#"))
    assert all(i < first_command for i, line in enumerate(body.splitlines()) if line.strip().startswith("#SBATCH"))


def test_sbatch_runs_the_search_command(tmp_path):
    """Run the script with a stand-in `greenknobs` on PATH: it gets the experiment and both URLs,
    the password only through the environment, and the script stops early without the URLs."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "greenknobs"
    fake.write_text('#!/bin/bash\necho "ARGS $*" >> "$CALLS"\necho "PGPASSWORD=${PGPASSWORD:-}" >> "$CALLS"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    secret = tmp_path / "db-password"
    secret.write_text("s3cret-from-file\n")
    calls = tmp_path / "calls.txt"
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "HOME": str(tmp_path), "CALLS": str(calls),
           "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_JOB_ID": "77",
           "GREENKNOBS_STORAGE": "postgresql+psycopg2://greenknobs@db.example:5432/greenknobs",
           "GREENKNOBS_MLFLOW_URI": "http://mlflow.example:5000", "GREENKNOBS_DB_PASSWORD_FILE": str(secret)}
    out = subprocess.run(["bash", str(SBATCH), "experiments/x.yaml"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == "ARGS validate experiments/x.yaml"
    assert lines[2] == ("ARGS search experiments/x.yaml --storage postgresql+psycopg2://greenknobs@db.example:5432/"
                        "greenknobs --mlflow-uri http://mlflow.example:5000")
    assert lines[3] == "PGPASSWORD=s3cret-from-file"
    assert "s3cret" not in out.stdout + out.stderr
    # without the storage URL it refuses to start, naming the variable
    env.pop("GREENKNOBS_STORAGE")
    calls.unlink()
    out = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "GREENKNOBS_STORAGE" in out.stderr and not calls.exists()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_sbatch_shellcheck():
    out = subprocess.run(["shellcheck", "-S", "warning", str(SBATCH)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


# -- Kubernetes ----------------------------------------------------------------------------------
def job() -> dict:
    docs = [d for d in yaml.safe_load_all(JOB.read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def test_k8s_job_structure():
    j = job()
    assert j["apiVersion"] == "batch/v1" and j["kind"] == "Job"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", j["metadata"]["name"])
    spec = j["spec"]
    assert isinstance(spec["parallelism"], int) and spec["parallelism"] >= 1
    assert isinstance(spec["completions"], int) and spec["completions"] >= spec["parallelism"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")  # the only ones a Job accepts
    assert pod["containers"]
    for c in pod["containers"]:
        assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1", "one GPU per pod"
        command = c["command"] + c.get("args", [])
        assert command[:2] == ["greenknobs", "search"]
        assert command[command.index("--storage") + 1] == "$(GREENKNOBS_STORAGE)"
        assert command[command.index("--mlflow-uri") + 1] == "$(GREENKNOBS_MLFLOW_URI)"
        env = {e["name"]: e for e in c["env"]}
        ref = env["GREENKNOBS_STORAGE"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"] and "value" not in env["GREENKNOBS_STORAGE"]
        assert env["GREENKNOBS_MLFLOW_URI"]["value"].startswith("http")
        # the experiment file named in the command is mounted
        mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
        assert any(command[2].startswith(m.rstrip("/") + "/") for m in mounts)


# -- secrets -------------------------------------------------------------------------------------
PLACEHOLDER = re.compile(r"^(<[^>]*>|\$\{?\w+\}?|\$\(\w+\)|\*+|\.\.\.)$")


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())


def test_no_plaintext_password_in_deploy():
    problems = []
    for path in deploy_files():
        text = path.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            # user:password@host in a URL
            for m in re.finditer(r"://[^/\s:@'\"]+:([^@\s/'\"]+)@", line):
                if not PLACEHOLDER.match(m.group(1)):
                    problems.append(f"{path.relative_to(ROOT)}:{n}: password in a URL: {line.strip()}")
            # password = value / password: value / PASSWORD="value"
            for m in re.finditer(r"(?i)\b\w*passw(?:or)?d\w*\s*[:=]\s*['\"]?([^\s'\"#,;)]+)", line):
                value = m.group(1)
                shell_expansion = line[:m.start()].endswith("${")  # ${PASSWORD_FILE:-}: a default, not a value
                if not (shell_expansion or PLACEHOLDER.match(value) or value.startswith(("$", "<"))):
                    problems.append(f"{path.relative_to(ROOT)}:{n}: password value: {line.strip()}")
    assert not problems, "\n".join(problems)
    # and no Kubernetes Secret with data in the repository
    for path in deploy_files():
        if path.suffix in (".yaml", ".yml"):
            for doc in yaml.safe_load_all(path.read_text()):
                assert not (doc and doc.get("kind") == "Secret"), f"{path}: a Secret belongs in the cluster, not here"


def test_readme_names_the_pieces():
    text = (DEPLOY / "README.md").read_text()
    assert text.startswith("## Scaling out")
    for needed in ("PostgreSQL", "MLflow tracking server", "one GPU", "--trials", "slurm/greenknobs-workers.sbatch",
                   "k8s/greenknobs-workers.yaml", "secretKeyRef"):
        assert needed in text, needed
