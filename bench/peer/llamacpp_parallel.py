"""llama.cpp side of the engine benchmark's concurrency rows: N sequences decoded together
in one context (llama.cpp's parallel sequences, as llama-batched-bench and llama-server's
slots use them), each with its own 65-token prompt, 64 greedy tokens each. Reports the
aggregate tokens per second and the time to each sequence's first token. Prints JSON.

    python llamacpp_parallel.py MODEL.gguf PROMPT_IDS_JSON THREADS STREAMS...
"""
import ctypes
import json
import sys
import time

import llama_cpp
import numpy as np

DECODE = 64


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def run(model, ids, threads, streams):
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = 256 * streams
    cparams.n_batch = 128 * streams
    cparams.n_ubatch = 512
    cparams.n_seq_max = streams
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        raise SystemExit("llama.cpp could not create a context")
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    batch = llama_cpp.llama_batch_init(128 * streams, 0, streams)

    short = ids[:64]
    prompts = [short + [short[s % len(short)]] for s in range(streams)]

    def submit(entries):
        # entries: (token, position, sequence, wants_logits)
        batch.n_tokens = len(entries)
        for i, (tok, pos, seq, logits) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")

    def argmax(i):
        ptr = llama_cpp.llama_get_logits_ith(ctx, i)
        row = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
        return int(row.argmax())

    started = time.perf_counter()
    entries = []
    last_index = []
    for s, p in enumerate(prompts):
        for j, tok in enumerate(p):
            entries.append((tok, j, s, j == len(p) - 1))
        last_index.append(len(entries) - 1)
    submit(entries)
    next_tok = [argmax(i) for i in last_index]
    first = time.perf_counter() - started
    ttft = [first * 1000.0] * streams
    generated = streams
    positions = [len(p) for p in prompts]
    for _ in range(DECODE - 1):
        submit([(next_tok[s], positions[s], s, True) for s in range(streams)])
        next_tok = [argmax(s) for s in range(streams)]
        positions = [x + 1 for x in positions]
        generated += streams
    secs = time.perf_counter() - started
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    return {"tps": generated / secs, "ttft_p50_ms": pct(ttft, 0.5), "ttft_p99_ms": pct(ttft, 0.99)}


def main():
    path, ids_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    streams = [int(s) for s in sys.argv[4:]] or [1, 4, 16]
    ids = json.load(open(ids_path))
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
    if not model:
        raise SystemExit(f"llama.cpp could not load {path}")
    out = {}
    for n in streams:
        out[str(n)] = run(model, ids, threads, n)
        print(f"llama.cpp, {n} parallel sequences: {out[str(n)]['tps']:.1f} tok/s", file=sys.stderr)
    llama_cpp.llama_model_free(model)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
