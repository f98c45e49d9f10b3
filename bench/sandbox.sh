#!/usr/bin/env bash
# Sandbox speed, one command: builds llmesh in release, installs the `wasmtime` PyPI
# package (the peer embedding) into a private virtualenv, then measures warm Python and a
# WASI hello module through the Run RPC beside native CPython and that package, throughput
# with 2 and 8 clients, and the server's memory. Prints one table.
#
#   bash bench/sandbox.sh
#   RUNS=500 POOL=4 bash bench/sandbox.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARGO_TARGET_DIR:-target}/release
RUNTIMES=${LLMESH_TEST_MODELS_DIR:-$HOME/.cache/llmesh-test-models}/runtimes
VENV=${BENCH_VENV:-$HOME/.cache/llmesh-bench-venv}

echo "==> building llmesh (release)"
cargo build --release -p llmesh -p llmesh-bench
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV with the wasmtime package"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c "import wasmtime" 2>/dev/null || "$VENV/bin/pip" install -q "wasmtime==50.0.1"
if [ ! -f "$RUNTIMES/python-3.12.0.wasm" ]; then
  echo "==> fetching the python runtime into $RUNTIMES"
  LLMESH__SANDBOX__RUNTIMES_DIR=$RUNTIMES LLMESH__DATABASE__URL="sqlite://$(mktemp -d)/fetch.db" \
    "$BIN/llmesh" sandbox prepare
fi
"$BIN/llmesh-bench" sandbox --binary "$BIN/llmesh" --runtimes-dir "$RUNTIMES" \
  --peer-python "$VENV/bin/python" --runs "${RUNS:-200}" --pool "${POOL:-2}"
