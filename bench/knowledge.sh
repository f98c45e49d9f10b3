#!/usr/bin/env bash
# Knowledge bases, one command: builds the benchmark in release, installs
# sentence-transformers (PyTorch CPU; several GB from PyPI, once) into a private
# virtualenv, starts the Postgres with pgvector, then on SQLite and on pgvector: ingests
# the repository's Markdown and protobuf files (chunks/s through IngestDocument and
# through llm.Embed, beside sentence-transformers on the same chunks and model files),
# fills one collection to CHUNKS chunks and times hybrid search (p50/p99 over gRPC with
# the query embedded, and at the store without). Prints the tables.
#
#   bash bench/knowledge.sh
#   CHUNKS=20000 QUERIES=100 bash bench/knowledge.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARGO_TARGET_DIR:-target}/release
VENV=${BENCH_ST_VENV:-$HOME/.cache/llmesh-st-venv}

echo "==> building llmesh-bench (release)"
cargo build --release -p llmesh-bench
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV with sentence-transformers"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c "import sentence_transformers" 2>/dev/null ||
  "$VENV/bin/pip" install -q "sentence-transformers==6.2.0"
LLMESH_TEST_PGVECTOR_URL=${LLMESH_TEST_PGVECTOR_URL:-$(scripts/pgvector start)}
export LLMESH_TEST_PGVECTOR_URL
for store in sqlite pgvector; do
  flag=()
  [ "$store" = pgvector ] && flag=(--pgvector)
  "$BIN/llmesh-bench" knowledge "${flag[@]}" --peer-python "$VENV/bin/python" \
    --chunks "${CHUNKS:-100000}" --queries "${QUERIES:-200}"
done
