"""Fuse: run several retrievers on the same queries and merge their rankings.

Two methods, both standard:

- ``rrf`` — reciprocal-rank fusion (Cormack et al., 2009): a document scores
  ``sum_r w_r / (rrf_k + rank_r)`` over the retrievers that found it.
- ``weighted`` — weighted score fusion with per-query min-max normalisation: each retriever's
  scores for a query are scaled to [0, 1], then summed with weights.

The output has the hit schema of a single retriever plus one score column per source
(``dense_score``, ``bm25_score``; null where that source did not find the document).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from searchpipe import columns as C
from searchpipe.errors import InputError
from searchpipe.index.store import rows_to_doc_ids
from searchpipe.stages.base import Source, Stage

METHODS = ("rrf", "weighted")


def fuse_hits(
    hits: list[pa.RecordBatch],
    weights: list[float],
    method: str,
    rrf_k: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Fuse per-source hits of the same queries.

    Returns, for the fused top-``k`` of each query in first-seen query order:
    (query index, doc row, fused score, [per-source raw score or NaN]).
    """
    query_ids = [h.column(C.QUERY_ID).to_numpy(zero_copy_only=False) for h in hits]
    order = {q: i for i, q in enumerate(dict.fromkeys(np.concatenate(query_ids).tolist()))}
    qidx = [
        np.fromiter((order[q] for q in ids), dtype=np.int64, count=len(ids)) for ids in query_ids
    ]
    rows = [h.column(C.DOC_ROW).to_numpy() for h in hits]
    raw = [h.column(C.SCORE).to_numpy(zero_copy_only=False).astype(np.float64) for h in hits]
    contrib = []
    for q, score, hit, w in zip(qidx, raw, hits, weights, strict=True):
        if method == "rrf":
            contrib.append(w / (rrf_k + hit.column(C.RANK).to_numpy().astype(np.float64)))
        else:
            n_q = len(order)
            lo = np.full(n_q, np.inf)
            hi = np.full(n_q, -np.inf)
            np.minimum.at(lo, q, score)
            np.maximum.at(hi, q, score)
            span = hi[q] - lo[q]
            contrib.append(
                w * np.where(span > 0, (score - lo[q]) / np.where(span > 0, span, 1), 1.0)
            )
    n_docs = int(max((r.max() for r in rows if len(r)), default=0)) + 1
    keys = np.concatenate([q * n_docs + r for q, r in zip(qidx, rows, strict=True)])
    unique, inverse = np.unique(keys, return_inverse=True)
    fused = np.bincount(inverse, weights=np.concatenate(contrib), minlength=len(unique))
    per_source = []
    offset = 0
    for score in raw:
        col = np.full(len(unique), np.nan)
        col[inverse[offset : offset + len(score)]] = score
        per_source.append(col)
        offset += len(score)
    q_of = unique // n_docs
    row_of = unique % n_docs
    # best first within each query; ties broken by doc row for determinism
    sort = np.lexsort((row_of, -fused, q_of))
    q_sorted = q_of[sort]
    start = np.searchsorted(q_sorted, q_sorted, side="left")
    rank = np.arange(len(sort)) - start + 1
    keep = sort[rank <= k]
    return q_of[keep], row_of[keep], fused[keep], [p[keep] for p in per_source]


class Fuse(Stage):
    """Hybrid retrieval: run ``retrievers`` on each query batch and fuse their hits.

    >>> Fuse([Retrieve(index, 100), RetrieveBM25(index, 100)], names=["dense", "bm25"])  # doctest: +SKIP
    """

    name = "fuse"

    def __init__(
        self,
        retrievers: list[Stage],
        names: list[str],
        method: str = "rrf",
        rrf_k: int = 60,
        weights: list[float] | None = None,
        k: int = 100,
    ) -> None:
        if method not in METHODS:
            raise InputError(f"fusion method {method!r} is not one of {', '.join(METHODS)}")
        if len(retrievers) != len(names) or not retrievers:
            raise InputError("fuse needs one name per retriever, and at least one retriever")
        self.retrievers = retrievers
        self.names = names
        self.method = method
        self.rrf_k = rrf_k
        self.weights = weights or [1.0] * len(retrievers)
        self.k = k
        self.requires = tuple(dict.fromkeys(c for r in retrievers for c in r.requires))
        self.provides = (
            C.QUERY_ID,
            C.QUERY_TEXT,
            C.DOC_ID,
            C.DOC_ROW,
            C.SCORE,
            C.RANK,
            *(f"{n}_score" for n in names),
        )
        self.index = retrievers[0].index  # type: ignore[attr-defined]

    def output_columns(self, available: set[str]) -> set[str]:
        return set(self.provides)

    def settings(self) -> dict[str, Any]:
        return {
            "retrievers": [r.settings() for r in self.retrievers],
            "names": self.names,
            "method": self.method,
            "rrf_k": self.rrf_k,
            "weights": self.weights,
            "k": self.k,
        }

    def open(self) -> None:
        for r in self.retrievers:
            r.open()

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            hits = [next(iter(r([batch]))) for r in self.retrievers]
            yield self.fuse_batch(batch, hits)

    def fuse_batch(self, batch: pa.RecordBatch, hits: list[pa.RecordBatch]) -> pa.RecordBatch:
        q, rows, fused, per_source = fuse_hits(hits, self.weights, self.method, self.rrf_k, self.k)
        # fuse_hits numbers queries in first-seen order over the hits; map back to the batch
        seen = list(
            dict.fromkeys(
                np.concatenate(
                    [h.column(C.QUERY_ID).to_numpy(zero_copy_only=False) for h in hits]
                ).tolist()
            )
        )
        batch_pos = {qid: i for i, qid in enumerate(batch.column(C.QUERY_ID).to_pylist())}
        take = pa.array(np.array([batch_pos[seen[i]] for i in q], dtype=np.int64))
        start = np.searchsorted(q, q, side="left")
        rank = (np.arange(len(q)) - start + 1).astype(np.int32)
        doc_rows = pa.array(rows.astype(np.int64))
        columns = [
            batch.column(C.QUERY_ID).take(take),
            batch.column(C.TEXT).take(take),
            rows_to_doc_ids(self.index, rows),
            doc_rows,
            pa.array(fused.astype(np.float32)),
            pa.array(rank),
            *(pa.array(p.astype(np.float32), mask=np.isnan(p)) for p in per_source),
        ]
        return pa.record_batch(columns, names=list(self.provides))


class FuseRuns(Source):
    """Fuse run files from anywhere (TREC, Arrow, JSONL, Parquet; ``stages.read``) by query.

    The same fusion as hybrid retrieval, over files: documents are matched by id across the
    runs; the output has ``query_id, doc_id, score, rank`` and one ``run<i>_score`` per run.

    >>> FuseRuns(["bm25.trec", "dense.trec"], method="rrf", rrf_k=60)  # doctest: +SKIP
    """

    name = "fuse_runs"

    def __init__(
        self,
        paths: list[str | Path],
        method: str = "rrf",
        rrf_k: int = 60,
        weights: list[float] | None = None,
        k: int = 100,
    ) -> None:
        from searchpipe.stages.read import Read

        if len(paths) < 2:
            raise InputError(f"fuse needs two or more runs, got {len(paths)}")
        if method not in METHODS:
            raise InputError(f"fusion method {method!r} is not one of {', '.join(METHODS)}")
        if weights is not None and len(weights) != len(paths):
            raise InputError(f"fuse got {len(weights)} weights for {len(paths)} runs")
        self.runs = [Read(p) for p in paths]
        for run in self.runs:
            missing = [c for c in (C.QUERY_ID, C.DOC_ID, C.RANK, C.SCORE) if c not in run.provides]
            if missing:
                raise InputError(f"run {run.path} lacks column(s) {', '.join(missing)}")
        self.method, self.rrf_k, self.k = method, rrf_k, k
        self.weights = weights or [1.0] * len(paths)
        self.provides = (
            C.QUERY_ID, C.DOC_ID, C.SCORE, C.RANK,
            *(f"run{i + 1}_score" for i in range(len(paths))),
        )  # fmt: skip

    def settings(self) -> dict[str, Any]:
        return {
            "runs": [str(r.path) for r in self.runs],
            "method": self.method,
            "rrf_k": self.rrf_k,
            "weights": self.weights,
            "k": self.k,
        }

    def fingerprint_source(self) -> str:
        return json.dumps([r.fingerprint_source() for r in self.runs])

    def output_columns(self, available: set[str]) -> set[str]:
        return set(self.provides)

    def read(self) -> Iterator[pa.RecordBatch]:
        tables = [
            pa.Table.from_batches(list(r.read())).select([C.QUERY_ID, C.DOC_ID, C.RANK, C.SCORE])
            for r in self.runs
        ]
        # documents are matched by id: number them over all runs, in place of doc store rows
        ids = pa.chunked_array([t.column(C.DOC_ID).cast(pa.string()) for t in tables])
        vocabulary = pc.unique(ids)
        hits = [
            pa.record_batch(
                [
                    t.column(C.QUERY_ID).cast(pa.string()).combine_chunks(),
                    pc.index_in(t.column(C.DOC_ID).cast(pa.string()), value_set=vocabulary)
                    .cast(pa.int64())
                    .combine_chunks(),
                    t.column(C.SCORE).cast(pa.float32()).combine_chunks(),
                    t.column(C.RANK).cast(pa.int32()).combine_chunks(),
                ],
                names=[C.QUERY_ID, C.DOC_ROW, C.SCORE, C.RANK],
            )
            for t in tables
        ]
        q, rows, fused, per_source = fuse_hits(hits, self.weights, self.method, self.rrf_k, self.k)
        seen = list(
            dict.fromkeys(pa.chunked_array([h.column(C.QUERY_ID) for h in hits]).to_pylist())
        )
        start = np.searchsorted(q, q, side="left")
        yield pa.record_batch(
            [
                pa.array([seen[i] for i in q], pa.string()),
                vocabulary.take(pa.array(rows.astype(np.int64))),
                pa.array(fused.astype(np.float32)),
                pa.array((np.arange(len(q)) - start + 1).astype(np.int32)),
                *(pa.array(p.astype(np.float32), mask=np.isnan(p)) for p in per_source),
            ],
            names=list(self.provides),
        )
