#!/usr/bin/env bash
# Set up (idempotently) and serve Exemplar with the bundled model.
# Extra arguments go to `python launch.py serve`, e.g. --port 8000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python launch.py serve "$@"
