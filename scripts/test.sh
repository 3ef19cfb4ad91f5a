#!/usr/bin/env bash
# Set up (if needed) and run the checks: the linter (ruff), the type checker (mypy), then the test
# suite -- unit tests on tiny models built from configs, plus a few end-to-end tests on the real
# MiniLM and BBC News data (a few minutes on 2 cores). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
echo "ruff:" && ruff check .
echo "mypy:" && mypy
exec python -m pytest -q "$@"
