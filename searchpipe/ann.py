"""Approximate indexes that say how approximate they are.

``choose_factory`` picks a FAISS factory by corpus size, following the faiss guidelines:
exact search while it is cheap, HNSW up to a few million vectors, IVF beyond. ``tune`` then
measures recall@10 against exact search on corpus-derived queries and raises
``efSearch``/``nprobe`` until the target recall is met. The queries are short snippets of
random documents (a title, or the first words of the text) embedded by the index's own model,
so they look like what users type; without a model, normalised midpoints of random document
pairs stand in (a harder, pessimistic set). The chosen setting and the measured recall go into the
manifest, and ``searchpipe info`` shows them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from searchpipe import columns as C

log = logging.getLogger(__name__)
EXACT_BELOW = 50_000
HNSW_BELOW = 2_000_000
N_QUERIES = 500
K = 10


def choose_factory(n_docs: int) -> str:
    """A factory string for ``n_docs`` vectors.

    >>> choose_factory(10_000), choose_factory(200_000), choose_factory(5_000_000)
    ('Flat', 'HNSW32', 'IVF8192,Flat')
    """
    if n_docs < EXACT_BELOW:
        return "Flat"
    if n_docs < HNSW_BELOW:
        return "HNSW32"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n_docs)))
    return f"IVF{nlist},Flat"


def sample_queries(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Normalised midpoints of random pairs of corpus vectors."""
    rng = np.random.default_rng(seed)
    a = vectors[rng.integers(0, len(vectors), n)]
    b = vectors[rng.integers(0, len(vectors), n)]
    q = a + b
    return (q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def pseudo_queries(texts: list[str], encoder: Any) -> np.ndarray:
    """Embeddings of query-like snippets of ``texts`` (the first 12 words of each)."""
    return encoder.encode([" ".join(t.split()[:12]) for t in texts])


def exact_topk(queries: np.ndarray, chunks: Iterator[np.ndarray], k: int = K) -> np.ndarray:
    """Exact inner-product top-k row ids, streaming the corpus in chunks (bounded memory)."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    offset = 0
    for chunk in chunks:
        s = queries @ chunk.T
        ids = np.broadcast_to(np.arange(offset, offset + len(chunk)), s.shape)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, ids], axis=1)
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, top, axis=1)
        best_i = np.take_along_axis(all_i, top, axis=1)
        offset += len(chunk)
    return best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k found in the returned top-k."""
    hits = sum(len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth, strict=True))
    return hits / max(int((truth >= 0).sum()), 1)


def _knob(index: Any) -> tuple[str, list[int]] | None:
    import faiss

    name = type(faiss.downcast_index(index)).__name__
    if "HNSW" in name:
        return "efSearch", [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024]
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return "nprobe", [
            p for p in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512) if p <= ivf.nlist
        ] or [ivf.nlist]
    return None


def tune(index: Any, queries: np.ndarray, truth: np.ndarray, target: float) -> dict[str, Any]:
    """Smallest efSearch/nprobe reaching ``target`` recall@10; returns the manifest entry."""
    import faiss

    knob = _knob(index)
    ps = faiss.ParameterSpace()
    if knob is None:  # e.g. PQ alone: nothing to tune, just measure
        _, found = index.search(queries, K)
        return {
            "recall@10": round(recall_at_k(found, truth), 4),
            "params": {},
            "target_recall": target,
        }
    name, values = knob
    recall = 0.0
    for value in values:
        ps.set_index_parameter(index, name, value)
        _, found = index.search(queries, K)
        recall = recall_at_k(found, truth)
        log.info("ann: %s=%d recall@10=%.4f", name, value, recall)
        if recall >= target:
            break
    if recall < target:
        log.warning(
            "ann: recall@10 %.3f stays below the target %.3f at %s=%d", recall, target, name, value
        )
    return {
        "recall@10": round(recall, 4),
        "params": {name: value},
        "target_recall": target,
        "queries": len(queries),
    }


def embed_chunks(folder: Path) -> Iterator[np.ndarray]:
    from searchpipe.pipeline import read_parts
    from searchpipe.stages.embed import arrow_to_vectors

    for batch in read_parts(folder):
        yield arrow_to_vectors(batch.column(C.EMBEDDING))


def tune_hook(
    embed_folder: Path, target: float, encoder: Any = None
) -> Callable[[Any, Any], dict[str, Any]]:
    """A BuildIndex hook: measure and tune the built index before it is committed.

    With ``encoder`` (the index's model), queries are snippets of the indexed texts;
    without it, midpoints of document vectors.
    """

    def hook(writer: Any, index: Any) -> dict[str, Any]:
        n = index.ntotal
        if encoder is not None:
            queries = pseudo_queries(_sample_texts(embed_folder, N_QUERIES), encoder)
        else:
            rng = np.random.default_rng(0)
            pick = np.sort(rng.choice(n, size=min(n, 4 * N_QUERIES), replace=False))
            queries = sample_queries(_take_rows(embed_folder, pick), min(N_QUERIES, n))
        truth = exact_topk(queries, embed_chunks(embed_folder))
        result = tune(index, queries, truth, target)
        return {"search_params": result["params"], "ann": result}

    return hook


def _sample_texts(folder: Path, n: int, seed: int = 0) -> list[str]:
    """Title (or text) of ``n`` random documents of an embed stage folder."""
    from searchpipe.pipeline import read_parts

    total = sum(b.num_rows for b in read_parts(folder))
    rows = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    out: list[str] = []
    offset = 0
    for batch in read_parts(folder):
        for r in rows[(rows >= offset) & (rows < offset + batch.num_rows)] - offset:
            title = batch.column(C.TITLE)[int(r)].as_py() if C.TITLE in batch.schema.names else ""
            out.append(title or batch.column(C.TEXT)[int(r)].as_py())
        offset += batch.num_rows
    return out


def _take_rows(folder: Path, rows: np.ndarray) -> np.ndarray:
    out = []
    offset = 0
    for chunk in embed_chunks(folder):
        sel = rows[(rows >= offset) & (rows < offset + len(chunk))] - offset
        if len(sel):
            out.append(chunk[sel])
        offset += len(chunk)
    return np.concatenate(out)
