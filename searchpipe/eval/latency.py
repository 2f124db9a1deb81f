"""Query latency with a breakdown: where each query's milliseconds go.

``measure`` runs queries one at a time through a loaded ``Searcher`` and reports p50/p95 of
the total and the median of each part: query embedding, dense search (FAISS), BM25, fusion,
rerank and I/O (fetching hit text from the doc store). ``overhead`` is everything that is not
a model forward pass, FAISS or BM25: our own Python and Arrow work around them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

PARTS = ("embed", "faiss", "bm25", "fusion", "rerank", "io")


def _parts(profile: dict[str, float], total: float) -> dict[str, float]:
    retrieval = (
        profile.get("fuse", 0.0) + profile.get("retrieve", 0.0) + profile.get("retrieve_bm25", 0.0)
    )
    engines = profile.get("faiss", 0.0) + profile.get("bm25", 0.0)
    models = profile.get("embed_forward", 0.0) + profile.get("rerank_forward", 0.0)
    return {
        "total": total,
        "embed": profile.get("embed", 0.0),
        "faiss": profile.get("faiss", 0.0),
        "bm25": profile.get("bm25", 0.0),
        "fusion": max(retrieval - engines, 0.0),
        "rerank": profile.get("rerank", 0.0),
        "io": profile.get("io", 0.0),
        "model_forward": models,
        "overhead": max(total - models - engines, 0.0),
    }


def measure(
    searcher: Any, queries: list[str], k: int | None = None, warmup: int = 3
) -> dict[str, Any]:
    """Latency figures (milliseconds) over ``queries``, searched one at a time by a loaded
    ``Searcher`` (``k``: hits per query, default the searcher's settings).

    >>> measure(Searcher("sample", k=10), ["bees", "onions"])["p50_ms"]  # doctest: +SKIP
    """
    for q in queries[:warmup]:
        searcher.search(q, k=k)
    rows = []
    for q in queries:
        profile: dict[str, float] = {}
        t0 = time.perf_counter()
        searcher.search(q, k=k, profile=profile)
        rows.append(_parts(profile, time.perf_counter() - t0))
    totals = np.array([r["total"] for r in rows]) * 1000
    result: dict[str, Any] = {
        "queries": len(rows),
        "p50_ms": round(float(np.percentile(totals, 50)), 2),
        "p95_ms": round(float(np.percentile(totals, 95)), 2),
        "mean_ms": round(float(totals.mean()), 2),
        "breakdown_p50_ms": {
            p: round(float(np.median([r[p] for r in rows]) * 1000), 2) for p in PARTS
        },
    }
    total_time = sum(r["total"] for r in rows)
    result["overhead_fraction"] = round(sum(r["overhead"] for r in rows) / total_time, 4)
    result["model_forward_fraction"] = round(sum(r["model_forward"] for r in rows) / total_time, 4)
    return result
