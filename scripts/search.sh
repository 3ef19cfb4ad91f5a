#!/usr/bin/env bash
# Set up (if needed) and run the knob search on the default experiment (SQLite, local MLflow, CPU).
# Extra arguments go to `greenknobs search`, e.g. --quick or --trials 4.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec greenknobs search experiments/bbc-news-minilm.yaml "$@"
