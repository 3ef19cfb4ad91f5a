#!/usr/bin/env bash
# Create .venv and install greenknobs with everything it needs. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: the CPU build on this machine's disk. Any looser requirement resolved by
# pip on its own would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
echo "setup: ok ($(python -c 'import torch, transformers, optuna, mlflow; print(f"torch {torch.__version__}, transformers {transformers.__version__}, optuna {optuna.__version__}, mlflow {mlflow.__version__}")'))"
