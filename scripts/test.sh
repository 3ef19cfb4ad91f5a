#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests on tiny models built from configs,
# plus a few end-to-end tests on the real MiniLM and BBC News data (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m pytest -q "$@"
