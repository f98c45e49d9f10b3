"""Memory read bandwidth of this machine, for the decode bandwidth bound in the README:
every core sums its own 1 GiB array of floats at the same time (numpy; best of 5 passes
each), and the per-core rates are added up.

    ~/.cache/llmesh-peer-venv/bin/python bench/bandwidth.py
"""
import multiprocessing as mp
import os
import time

import numpy as np


def reader(_):
    a = np.ones(2**28, dtype=np.float32)
    a.sum()  # touch every page first
    best = 0.0
    for _ in range(5):
        started = time.perf_counter()
        a.sum()
        best = max(best, a.nbytes / (time.perf_counter() - started))
    return best / 1e9


def main():
    cores = os.cpu_count() or 1
    with mp.Pool(cores) as pool:
        rates = pool.map(reader, range(cores))
    print(f"{cores} readers: {sum(rates):.1f} GB/s ({', '.join(f'{r:.1f}' for r in rates)})")


if __name__ == "__main__":
    main()
