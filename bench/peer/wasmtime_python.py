"""The peer of `llmesh-bench sandbox`: the same CPython-for-WASI module run through
another wasmtime embedding, the `wasmtime` package from PyPI, the way a straightforward
embedding does it: the module compiled once (and cached on disk), then for every run a new
store, WASI context and instance, and `_start` with `python -c <code>`.

    python bench/peer/wasmtime_python.py --module python-3.12.0.wasm --runs 200 --code 'print(1)'

Prints one JSON object: the per-run times in milliseconds (sorted), the compile time and
the package version.
"""

import argparse
import importlib.metadata
import json
import os
import sys
import tempfile
import time

import wasmtime


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--module", required=True)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--code", default="print(1)")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "wasmtime-py-python.cwasm"))
    a = p.parse_args()

    engine = wasmtime.Engine()
    started = time.perf_counter()
    module = None
    if os.path.exists(a.cache):
        try:
            module = wasmtime.Module.deserialize_file(engine, a.cache)
        except Exception:
            module = None
    if module is None:
        module = wasmtime.Module.from_file(engine, a.module)
        with open(a.cache, "wb") as f:
            f.write(module.serialize())
    compile_s = time.perf_counter() - started

    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    out_path = os.path.join(tempfile.gettempdir(), f"wasmtime-py-out-{os.getpid()}.txt")

    def one():
        store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["python", "-c", a.code]
        wasi.stdout_file = out_path
        store.set_wasi(wasi)
        instance = linker.instantiate(store, module)
        start = instance.exports(store)["_start"]
        try:
            start(store)
        except wasmtime.ExitTrap as e:
            if e.code != 0:
                raise
        with open(out_path) as f:
            return f.read()

    for _ in range(a.warmup):
        out = one()
    if out.strip() != "1" and a.code == "print(1)":
        sys.exit(f"unexpected output {out!r}")
    times = []
    for _ in range(a.runs):
        t = time.perf_counter()
        one()
        times.append((time.perf_counter() - t) * 1000)
    os.unlink(out_path)
    times.sort()
    print(json.dumps({
        "times_ms": times,
        "compile_s": compile_s,
        "version": importlib.metadata.version("wasmtime"),
    }))


if __name__ == "__main__":
    main()
