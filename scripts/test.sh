#!/usr/bin/env bash
# Set up (idempotently, with test dependencies and Chromium) and run every test.
# Extra arguments go to pytest, e.g. -m "not slow" for the quick ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
