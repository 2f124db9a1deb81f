"""Approximate indexes that say how approximate they are.

``tune_search_params`` measures recall@10 against exact search on corpus-derived queries and raises
``efSearch``/``nprobe`` until the target recall is met. The queries are short snippets of
random documents (a title, or the first words of the text) embedded by the index's own model,
so they look like what users type; without a model, normalised midpoints of random document
pairs stand in (a harder, pessimistic set). The chosen setting and the measured recall go into the
manifest, and ``searchpipe info`` shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from searchpipe import columns as C
from searchpipe.arrow import arrow_to_vectors, file_batches
from searchpipe.index.layout import DOCS_FILE, VECTORS_FILE

if TYPE_CHECKING:
    from searchpipe.index.store import IndexWriter

log = logging.getLogger(__name__)
N_QUERIES = 500
K = 10


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


def tune_search_params(
    index: Any, queries: np.ndarray, truth: np.ndarray, target: float
) -> dict[str, Any]:
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


def _vector_chunks(path: Path) -> Iterator[np.ndarray]:
    """The embeddings of a ``vectors.arrow`` file, batch by batch, in doc store row order."""
    for batch in file_batches(path):
        yield arrow_to_vectors(batch.column(C.EMBEDDING))


class TuneSearchParams:
    """A build hook: measure and tune the built index before it is committed.

    Reads the staged version's own files (``vectors.arrow`` for exact search, the doc store for
    query snippets), so it sees exactly the rows the index holds. With ``encoder`` (the
    index's model), queries are snippets of the indexed texts; without it, midpoints of
    document vectors.
    """

    def __init__(self, target: float, encoder: Any = None) -> None:
        self.target = target
        self.encoder = encoder

    def __call__(self, writer: IndexWriter, faiss_index: Any) -> dict[str, Any]:
        vectors = writer.path(VECTORS_FILE)
        n = faiss_index.ntotal
        if self.encoder is not None:
            texts = _sample_texts(writer.path(DOCS_FILE), N_QUERIES)
            queries = pseudo_queries(texts, self.encoder)
        else:
            rng = np.random.default_rng(0)
            pick = np.sort(rng.choice(n, size=min(n, 4 * N_QUERIES), replace=False))
            queries = sample_queries(_take_rows(vectors, pick), min(N_QUERIES, n))
        truth = exact_topk(queries, _vector_chunks(vectors))
        result = tune_search_params(faiss_index, queries, truth, self.target)
        return {"search_params": result["params"], "ann": result}


def _sample_texts(docs: Path, n: int, seed: int = 0) -> list[str]:
    """Title (or text) of ``n`` random documents of a doc store file."""
    total = sum(b.num_rows for b in file_batches(docs))
    rows = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    out: list[str] = []
    offset = 0
    for batch in file_batches(docs):
        for r in rows[(rows >= offset) & (rows < offset + batch.num_rows)] - offset:
            title = batch.column(C.TITLE)[int(r)].as_py()
            out.append(title or batch.column(C.TEXT)[int(r)].as_py())
        offset += batch.num_rows
    return out


def _take_rows(vectors: Path, rows: np.ndarray) -> np.ndarray:
    out = []
    offset = 0
    for chunk in _vector_chunks(vectors):
        sel = rows[(rows >= offset) & (rows < offset + len(chunk))] - offset
        if len(sel):
            out.append(chunk[sel])
        offset += len(chunk)
    return np.concatenate(out)
