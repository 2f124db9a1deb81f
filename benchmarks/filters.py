"""Filtered dense search at scale: counts, correctness, recall and latency per index type.

    python benchmarks/filters.py [--docs 100000] [--dim 64] [--queries 200] [--json]

Builds Flat, HNSW32 and IVF indexes of ``--docs`` synthetic clustered unit vectors through
the real build stage, each document with a metadata field ``bucket`` uniform in 0..9999, and
searches ``--queries`` held-out vectors one at a time through ``Index.search`` with filters
of selectivity 0.1%, 1%, 10% and 50% (``bucket < N``). For every cell it reports:

- ``count_ok``: the share of queries that got exactly min(k, matching) hits (goal 1.0);
- ``match_ok``: the share of hits that match the filter (goal 1.0);
- ``recall@10`` against exact search over the matching rows (goal >= 0.95);
- ``p50_ms`` per query, and which path answered (FAISS selector or exact over the rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, log  # noqa: E402

from searchpipe import columns as C  # noqa: E402
from searchpipe.arrow import vectors_to_arrow  # noqa: E402

SELECTIVITY = {0.001: 10, 0.01: 100, 0.1: 1000, 0.5: 5000}
K = 10


def corpus(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dim)).astype(np.float32)
    x = centres[rng.integers(0, 256, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, rng.integers(0, 10_000, n)


def build(root: Path, factory: str, vectors: np.ndarray, buckets: np.ndarray) -> object:
    from searchpipe.index.ann import TuneSearchParams
    from searchpipe.index.store import Index
    from searchpipe.stages.build import BuildIndex

    dim = vectors.shape[1]
    encoder = {"name": "synthetic", "weights_sha256": "-", "pooling": "mean", "normalize": True,
               "dim": dim, "max_length": 16}  # fmt: skip
    hooks = [] if factory == "Flat" else [TuneSearchParams(0.95)]
    stage = BuildIndex(root, factory, encoder, {"corpus": {"path": "synthetic", "sha256": "-"}},
                       n_rows=len(vectors), hooks=hooks)  # fmt: skip

    def batches():
        for start in range(0, len(vectors), 10_000):
            v = vectors[start : start + 10_000]
            ids = [f"d{i}" for i in range(start, start + len(v))]
            meta = [json.dumps({"bucket": int(b)}) for b in buckets[start : start + len(v)]]
            yield pa.record_batch(
                {C.DOC_ID: ids, C.TITLE: [""] * len(v), C.TEXT: ["x"] * len(v),
                 C.METADATA: meta, C.EMBEDDING: vectors_to_arrow(v)}
            )  # fmt: skip

    for _ in stage(batches()):
        pass
    return Index.open(root)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from searchpipe.index.filters import EXACT_BELOW, EXACT_FLOATS

    vectors, buckets = corpus(args.docs + args.queries, args.dim)
    queries, vectors, buckets = (
        vectors[: args.queries],
        vectors[args.queries :],
        buckets[args.queries :],
    )
    nlist = 2 ** round(np.log2(4 * np.sqrt(args.docs)))
    result: dict = {"docs": args.docs, "dim": args.dim, "queries": args.queries,
                    "exact_below": EXACT_BELOW, "exact_floats": EXACT_FLOATS, "cells": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for factory in ("Flat", "HNSW32", f"IVF{nlist},Flat"):
            t0 = time.perf_counter()
            index = build(Path(tmp) / factory.replace(",", "_"), factory, vectors, buckets)
            log(
                f"{factory}: built in {time.perf_counter() - t0:.1f}s, params {index.manifest.get('search_params')}"
            )
            for fraction, below in SELECTIVITY.items():
                allowed = index.filter(f"bucket < {below}")
                rows = allowed.rows
                counts = matches = hits_total = 0
                recalls, times = [], []
                for q in queries:
                    t = time.perf_counter()
                    _, found = index.search(q[None, :], K, allowed)
                    times.append(1000 * (time.perf_counter() - t))
                    got = found[0][found[0] >= 0]
                    counts += len(got) == min(K, len(rows))
                    matches += int(np.isin(got, rows).sum())
                    hits_total += len(got)
                    exact = rows[np.argsort(-(vectors[rows] @ q))[:K]]
                    recalls.append(len(set(got) & set(exact)) / max(len(exact), 1))
                cell = {
                    "matching": len(rows),
                    "path": "exact"
                    if allowed.exact(args.dim) or factory == "Flat"
                    else "faiss selector",
                    "count_ok": round(counts / len(queries), 4),
                    "match_ok": round(matches / max(hits_total, 1), 4),
                    "recall@10": round(float(np.mean(recalls)), 4),
                    "p50_ms": round(float(np.median(times)), 3),
                }
                result["cells"][f"{factory} {fraction:.1%}"] = cell
                log(f"  {fraction:>6.1%}: {cell}")
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
