#!/usr/bin/env bash
# Open WebUI 0.12.4 as a front end to Exemplar: install it once into a venv of its own (it is
# large, ~3 GB, and pins its own dependencies, so it stays out of .venv), start it on 127.0.0.1,
# set it up for Exemplar (integrations/openwebui/connect.py), and keep serving until Ctrl-C.
#
#   bash scripts/openwebui.sh --with-exemplar   # also start Exemplar (scripts/serve.sh), with a fresh token
#   EXEMPLAR_INTEGRATION_TOKEN=<the token Exemplar was started with> bash scripts/openwebui.sh
#   bash scripts/openwebui.sh --install-only
#
# Environment: EXEMPLAR_URL (http://127.0.0.1:7860), OPENWEBUI_PORT (8080), OPENWEBUI_DATA_DIR
# (data/open-webui; Open WebUI's log is open-webui.log in it), EXEMPLAR_OPENWEBUI_VENV
# (~/.cache/exemplar/open-webui-0.12.4), EXEMPLAR_TORCH (torch==2.13.0), EXEMPLAR_TORCH_INDEX
# (the CPU wheel index; empty: pip's own sources only), EXEMPLAR_WAIT_S (how long to wait for
# Exemplar to answer, 900).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

owui_version=0.12.4
torch_spec="${EXEMPLAR_TORCH:-torch==2.13.0}"
torch_index="${EXEMPLAR_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
venv="${EXEMPLAR_OPENWEBUI_VENV:-$HOME/.cache/exemplar/open-webui-$owui_version}"
stamp="$venv/.exemplar-openwebui"
want="open-webui==$owui_version $torch_spec"

install() {
  # pip walks its whole resolver even when everything is there (~25 s): the stamp skips it.
  # It is written last, so an interrupted install runs again.
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  local python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "Creating $venv with $("$python_bin" --version)…"
    mkdir -p "$(dirname "$venv")"
    "$python_bin" -m venv "$venv"
  fi
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  local index=()
  # Torch first, the CPU build: open-webui would otherwise pull the CUDA one (gigabytes more).
  if [ -n "$torch_index" ] && "$venv/bin/python" -c \
      "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$torch_index/" 2>/dev/null; then
    index=(--extra-index-url "$torch_index")
  fi
  echo "Installing $torch_spec (CPU build)…"
  "${pip[@]}" install "$torch_spec" "${index[@]}"
  echo "Installing open-webui==$owui_version (several minutes)…"
  "${pip[@]}" install "open-webui==$owui_version"
  echo "$want" > "$stamp"
}

install_only=0
with_exemplar=0
case "${1:-}" in
  --install-only) install_only=1 ;;
  --with-exemplar) with_exemplar=1 ;;
  "") ;;
  *) echo "Unknown option $1 (use --with-exemplar or --install-only)." >&2; exit 2 ;;
esac
if [ $with_exemplar = 1 ] && [ -z "${EXEMPLAR_INTEGRATION_TOKEN:-}" ]; then
  # A new token each start is enough: connect.py gives Open WebUI the current one every time.
  EXEMPLAR_INTEGRATION_TOKEN=$(python3 -c "import secrets; print(secrets.token_urlsafe(24))")
  export EXEMPLAR_INTEGRATION_TOKEN
fi
token="${EXEMPLAR_INTEGRATION_TOKEN:-}"
if [ $install_only = 0 ] && [ -z "$token" ]; then
  echo "Set EXEMPLAR_INTEGRATION_TOKEN to the token Exemplar was started with (the same variable, or" >&2
  echo "--integration-token), or pass --with-exemplar to start Exemplar here too." >&2
  exit 2
fi
exemplar="${EXEMPLAR_URL:-http://127.0.0.1:7860}"
exemplar="${exemplar%/}"

exemplar_pid=""
server=""
stop_all() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
  fi
  if [ -n "$exemplar_pid" ]; then
    # Exemplar runs in a session of its own (setsid), so its setup's pip and its server stop together.
    kill -- "-$exemplar_pid" 2>/dev/null || true
    wait "$exemplar_pid" 2>/dev/null || true
    exemplar_pid=""
  fi
}
trap 'stop_all; exit 130' INT TERM
trap stop_all EXIT
if [ $with_exemplar = 1 ]; then
  port_of_exemplar="${exemplar##*:}"
  echo "Starting Exemplar (scripts/serve.sh --port $port_of_exemplar) beside Open WebUI…"
  setsid bash "$root/scripts/serve.sh" --port "$port_of_exemplar" &
  exemplar_pid=$!
fi

start=$(date +%s)
install
echo "Open WebUI $owui_version is installed in $venv ($(( $(date +%s) - start )) s)."
[ $install_only = 1 ] && exit 0
port="${OPENWEBUI_PORT:-8080}"
data_dir="${OPENWEBUI_DATA_DIR:-$root/data/open-webui}"
mkdir -p "$data_dir"
data_dir=$(cd "$data_dir" && pwd)

# These settings seed a fresh data dir only (Open WebUI keeps its config in webui.db afterwards);
# connect.py applies the ones that matter through the admin API on every start.
# WEBUI_AUTH=False: one user, the admin, and no sign-in: bind to 127.0.0.1 only.
# RAG_EMBEDDING_MODEL empty: no embedding model to load, which offline would fail with a traceback.
export DATA_DIR="$data_dir" OFFLINE_MODE=true HF_HUB_OFFLINE=1 WEBUI_AUTH=False ENABLE_OLLAMA_API=False \
  OPENAI_API_BASE_URL="$exemplar/v1" OPENAI_API_KEY="$token" RAG_EMBEDDING_MODEL="" \
  ENABLE_TITLE_GENERATION=False ENABLE_TAGS_GENERATION=False ENABLE_FOLLOW_UP_GENERATION=False \
  ANONYMIZED_TELEMETRY=False DO_NOT_TRACK=True SCARF_NO_ANALYTICS=True

# `serve` writes its secret key file into the working directory: keep it with the data.
cd "$data_dir"
echo "Starting Open WebUI on http://127.0.0.1:$port (data in $data_dir)…"
start=$(date +%s)
log="$data_dir/open-webui.log"
"$venv/bin/open-webui" serve --host 127.0.0.1 --port "$port" >> "$log" 2>&1 &
server=$!

until "$venv/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "http://127.0.0.1:$port/health" 2>/dev/null; do
  if ! kill -0 "$server" 2>/dev/null; then
    wait "$server" || true
    server=""
    tail -n 20 "$log" >&2
    echo "Open WebUI exited before it answered on port $port (is the port taken? its log: $log)." >&2
    exit 1
  fi
  if [ $(( $(date +%s) - start )) -gt 600 ]; then
    echo "Open WebUI did not answer /health within 600 s; stopping it (its log: $log)." >&2
    exit 1
  fi
  sleep 1
done
echo "Open WebUI answered /health after $(( $(date +%s) - start )) s."

waited=0
until "$venv/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "$exemplar/healthz" 2>/dev/null; do
  if [ -n "$exemplar_pid" ] && ! kill -0 "$exemplar_pid" 2>/dev/null; then
    echo "Exemplar exited (its output is above); stopping Open WebUI." >&2
    exit 1
  fi
  if [ $waited = 0 ]; then echo "Waiting for Exemplar at $exemplar…"; fi
  if [ $waited -ge "${EXEMPLAR_WAIT_S:-900}" ]; then
    echo "Exemplar did not answer at $exemplar within $waited s: setting Open WebUI up anyway." >&2
    break
  fi
  sleep 2
  waited=$((waited + 2))
done

if ! "$venv/bin/python" "$root/integrations/openwebui/connect.py" --openwebui "http://127.0.0.1:$port" \
    --exemplar "$exemplar" --token "$token"; then
  echo "Setting up Open WebUI for Exemplar failed (above); stopping it." >&2
  exit 1
fi
echo "Open WebUI is ready at http://127.0.0.1:$port (its log: $log; Ctrl-C stops it$( \
  [ -n "$exemplar_pid" ] && echo " and Exemplar"))."
wait "$server"
