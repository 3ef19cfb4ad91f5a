#!/usr/bin/env bash
# Create .venv and install greenknobs with everything it needs. Safe to re-run.
#
# torch is installed first, pinned to 2.13.0, because anything that depends on it would otherwise
# let pip pick a build. Which build pip takes:
#   - this project's machines carry a CPU build of torch 2.13.0 on the local disk (pip's
#     find-links): pip takes that one, ~20 s, no download;
#   - elsewhere pip takes PyPI's torch 2.13.0 wheel for the platform, which on Linux x86_64 is the
#     CUDA build (several GB): what you want on a machine with an NVIDIA GPU;
#   - on a CPU-only machine elsewhere, set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#     to fetch PyTorch's CPU build instead (~200 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  python -m pip install -q "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
else
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[dev]"
echo "setup: ok ($(python - <<'PY'
import mlflow, optuna, torch, transformers
cuda = torch.version.cuda or "none"
print(f"torch {torch.__version__} (CUDA {cuda}), transformers {transformers.__version__}, "
      f"optuna {optuna.__version__}, mlflow {mlflow.__version__}")
PY
))"
