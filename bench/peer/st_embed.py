"""sentence-transformers on the chunks llmesh embedded, for `llmesh-bench knowledge`.

    python st_embed.py MODEL_DIR CHUNKS_JSON

MODEL_DIR is the model directory llmesh loads (safetensors, config.json, tokenizer.json,
1_Pooling); CHUNKS_JSON holds {"texts": [...], "vectors": [[...], ...]}, llmesh's own
vectors for those texts. Warms up on the first batch, then times one encode of every text
in batches of 32 on the CPU with as many threads as there are cores, and prints JSON: the
seconds, the versions, and the cosine between its vectors and llmesh's.
"""

import json
import os
import sys
import time

import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer


def main() -> None:
    model_dir, chunks_path = sys.argv[1], sys.argv[2]
    with open(chunks_path, encoding="utf-8") as f:
        chunks = json.load(f)
    texts = chunks["texts"]
    ours = np.asarray(chunks["vectors"], dtype=np.float32)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    model = SentenceTransformer(model_dir, device="cpu")
    model.encode(texts[:32], batch_size=32)
    started = time.perf_counter()
    theirs = model.encode(texts, batch_size=32, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    cosine = np.sum(theirs * ours, axis=1)
    json.dump(
        {
            "seconds": seconds,
            "texts": len(texts),
            "version": sentence_transformers.__version__,
            "torch": torch.__version__,
            "threads": threads,
            "min_cosine": float(cosine.min()),
            "mean_cosine": float(cosine.mean()),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
