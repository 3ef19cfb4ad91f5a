#!/usr/bin/env bash
# Set up (if needed), run the knob search on the default experiment (SQLite, local MLflow, CPU),
# then write its sustainability report. Extra arguments go to `greenknobs search`, e.g. --quick or
# --trials 4; --quick, --storage and --mlflow-uri are passed on to `greenknobs report` as well.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
EXPERIMENT=experiments/bbc-news-minilm.yaml
greenknobs search "$EXPERIMENT" "$@"
report_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) report_args+=(--quick) ;;
    --storage|--mlflow-uri) report_args+=("$1" "$2"); shift ;;
  esac
  shift
done
exec greenknobs report "$EXPERIMENT" ${report_args[@]+"${report_args[@]}"}
