"""Aggregate: passage hits to document hits, each document scored by its best passage.

An index of chunked documents answers with passages; a user asks for documents. The best
passage's score is the document's score (MaxP, Dai & Callan 2019), its row stays on the hit
(``doc_row``), so the reranker reads that passage and the snippet shows it. Each retriever
and fusion works on passages first: a document found by dense search in one passage and by
BM25 in another is fused per passage, then the best fused passage speaks for the document.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from searchpipe import columns as C
from searchpipe.stages.base import Stage


def best_passages(query_ids: pa.Array, doc_ids: pa.Array, ranks: np.ndarray) -> np.ndarray:
    """Rows to keep: per (query, document), the passage of best (lowest) rank, in query order
    and then rank order.

    >>> best_passages(pa.array(["q", "q", "q"]), pa.array(["a", "b", "a"]), np.array([1, 2, 3]))
    array([0, 1])
    """
    q = np.asarray(query_ids.dictionary_encode().indices, dtype=np.int64)
    d = np.asarray(doc_ids.dictionary_encode().indices, dtype=np.int64)
    # queries keep their first-seen order
    first_seen = np.full(int(q.max(initial=-1)) + 1, len(q), dtype=np.int64)
    np.minimum.at(first_seen, q, np.arange(len(q)))
    q_order = np.argsort(np.argsort(first_seen))[q]
    order = np.lexsort((ranks, q_order))
    key = q_order[order] * (int(d.max(initial=0)) + 1) + d[order]
    _, first = np.unique(key, return_index=True)
    keep = order[np.sort(first)]
    return keep[np.lexsort((ranks[keep], q_order[keep]))]


class BestPassage(Stage):
    """Keep each query's best passage of each document, ranked again, at most ``k`` documents.

    >>> BestPassage(100).requires
    ('query_id', 'doc_id', 'rank')
    """

    name = "best_passage"
    requires = (C.QUERY_ID, C.DOC_ID, C.RANK)

    def __init__(self, k: int) -> None:
        self.k = k

    def settings(self) -> dict[str, Any]:
        return {"k": self.k}

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                yield batch
                continue
            ranks = batch.column(C.RANK).to_numpy(zero_copy_only=False)
            keep = best_passages(batch.column(C.QUERY_ID), batch.column(C.DOC_ID), ranks)
            out = batch.take(pa.array(keep, pa.int64()))
            q = np.asarray(out.column(C.QUERY_ID).dictionary_encode().indices, dtype=np.int64)
            start = _group_starts(q)
            rank = (np.arange(len(q)) - start + 1).astype(np.int32)
            out = out.set_column(out.schema.get_field_index(C.RANK), C.RANK, pa.array(rank))
            yield out.filter(pa.array(rank <= self.k))


def _group_starts(q: np.ndarray) -> np.ndarray:
    """Index of the first row of each row's run of equal values (rows are grouped by query)."""
    change = np.r_[True, q[1:] != q[:-1]]
    return np.maximum.accumulate(np.where(change, np.arange(len(q)), 0))
