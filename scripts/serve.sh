#!/usr/bin/env bash
# Builds fluxpipe and starts the server. Installs its Debian packages first.
#   FLUXPIPE_DATA   data folder (default ./data)        FLUXPIPE_LISTEN  (default 127.0.0.1:8080)
#   FLUXPIPE_MODEL  model folder or file, or a preset (schnell, schnell-fp8, schnell-q8, schnell-q4:
#                   pulled into FLUXPIPE_MODELS, default ~/.cache/fluxpipe/models, when missing)
#                   (optional; without one, generation answers 503)
# On the first start it creates an API key and prints it. Any `fluxpipe serve` option may follow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2 --target fluxpipe
export FLUXPIPE_DATA="${FLUXPIPE_DATA:-$PWD/data}"
export FLUXPIPE_LISTEN="${FLUXPIPE_LISTEN:-127.0.0.1:8080}"
if ! ./build/fluxpipe keys list --data "$FLUXPIPE_DATA" | grep -q active; then
  echo "No API key yet; creating one:"
  ./build/fluxpipe keys add --data "$FLUXPIPE_DATA" --name first
fi
# A model name rather than a path: pull what is missing before serving (see `fluxpipe pull --list`).
if [ -n "${FLUXPIPE_MODEL:-}" ] && [ ! -e "$FLUXPIPE_MODEL" ]; then
  export FLUXPIPE_PULL=1
fi
exec ./build/fluxpipe serve "$@"
