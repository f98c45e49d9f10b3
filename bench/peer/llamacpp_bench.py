"""llama.cpp side of the engine benchmark: single-stream prefill and decode speed with the
same GGUF file, prompt and thread count as llmesh. Prints one JSON object.

    python llamacpp_bench.py MODEL.gguf PROMPT_IDS_JSON DECODE_TOKENS THREADS RUNS
"""
import json
import statistics
import sys
import time

from llama_cpp import Llama


def main():
    model, ids_path, decode, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    ids = json.load(open(ids_path))
    llm = Llama(model_path=model, n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
    prefill, dec = [], []
    for _ in range(runs):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        prefill.append(len(ids) / (time.perf_counter() - t))
        tok = llm.sample(temp=0.0) if hasattr(llm, "sample") else 0
        t = time.perf_counter()
        for _ in range(decode):
            llm.eval([tok])
            tok = llm.sample(temp=0.0)
        dec.append(decode / (time.perf_counter() - t))
    print(json.dumps({"prefill_tps": statistics.median(prefill), "decode_tps": statistics.median(dec)}))


if __name__ == "__main__":
    main()
