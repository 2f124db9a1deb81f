"""Retrieve: the first stage, one row per (query, hit).

``Retrieve`` searches the index's FAISS vectors with query embeddings; ``RetrieveBM25`` searches
its BM25 index with the query text. Both give the same hit columns, so fusion, rerank and
write take either.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from searchpipe import columns as C
from searchpipe.arrow import arrow_to_vectors
from searchpipe.errors import InputError
from searchpipe.index import Index
from searchpipe.index.layout import BM25_DIR
from searchpipe.index.store import rows_to_doc_ids
from searchpipe.stages.base import Stage
from searchpipe.timing import timed

if TYPE_CHECKING:
    from searchpipe.index.filters import RowFilter

HITS_SCHEMA = pa.schema(
    [
        (C.QUERY_ID, pa.string()),
        (C.QUERY_TEXT, pa.string()),
        (C.DOC_ID, pa.string()),
        (C.DOC_ROW, pa.int64()),
        (C.SCORE, pa.float32()),
        (C.RANK, pa.int32()),
    ]
)


def hits_batch(
    batch: pa.RecordBatch, scores: np.ndarray, rows: np.ndarray, index: Index
) -> pa.RecordBatch:
    """Long-format hits from (n, k) ``scores``/``rows`` of the n queries in ``batch``."""
    n, k = rows.shape
    valid = rows >= 0  # faiss pads with -1 when fewer than k hits exist
    query_index = np.repeat(np.arange(n), k)[valid.reshape(-1)]
    flat_rows = rows[valid]
    ranks = (np.cumsum(valid, axis=1)[valid]).astype(np.int32)
    take = pa.array(query_index, pa.int64())
    doc_rows = pa.array(flat_rows, pa.int64())
    return pa.record_batch(
        [
            batch.column(C.QUERY_ID).take(take),
            batch.column(C.TEXT).take(take),
            rows_to_doc_ids(index, flat_rows),
            doc_rows,
            pa.array(scores[valid].astype(np.float32)),
            pa.array(ranks),
        ],
        schema=HITS_SCHEMA,
    )


class Retrieve(Stage):
    """Dense retrieval: the ``k`` nearest documents of each query embedding.

    >>> Retrieve(index, k=10)  # doctest: +SKIP
    """

    name = "retrieve"
    requires: tuple[str, ...] = (C.QUERY_ID, C.TEXT, C.EMBEDDING)
    provides = tuple(HITS_SCHEMA.names)

    def __init__(self, index: Index, k: int = 100, allowed: RowFilter | None = None) -> None:
        self.index = index
        self.k = k
        #: only these doc store rows may be hits (a metadata filter, ``Index.filter``)
        self.allowed = allowed

    def output_columns(self, available: set[str]) -> set[str]:
        return set(self.provides)

    def settings(self) -> dict[str, Any]:
        m = self.index.manifest
        s = {"index": m["name"], "version": m["version"], "files": m["files"], "k": self.k}
        if self.allowed is not None:
            s["filter"] = self.allowed.expr
        return s

    def search(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        """(n, k) scores and doc store rows for the queries of ``batch``."""
        with timed("faiss"):
            vectors = arrow_to_vectors(batch.column(C.EMBEDDING))
            return self.index.search(vectors, self.k, self.allowed)

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            scores, rows = self.search(batch)
            yield hits_batch(batch, scores, rows, self.index)


class RetrieveBM25(Retrieve):
    """Lexical retrieval: the ``k`` best BM25 matches of each query's text.

    Same output as dense ``Retrieve``; only the search differs.

    >>> RetrieveBM25(index, k=100)  # doctest: +SKIP
    """

    name = "retrieve_bm25"
    requires = (C.QUERY_ID, C.TEXT)

    def __init__(self, index: Index, k: int = 100, allowed: RowFilter | None = None) -> None:
        super().__init__(index, k, allowed)
        if index.bm25 is None and not (index.version_dir / BM25_DIR).is_dir():
            raise InputError(
                f"index {index.name} has no BM25 index; rebuild it with BM25 on (the default), "
                "or search with retriever 'dense'"
            )
        self.bm25 = index.bm25

    def open(self) -> None:
        # Index.open loads BM25 with the rest of its version, so a writer removing that
        # version folder later cannot break a long-lived reader
        if self.bm25 is None:
            from searchpipe.index.bm25 import BM25Index

            self.bm25 = BM25Index(self.index.version_dir / BM25_DIR)

    def search(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        self.open()
        mask = self.allowed.mask() if self.allowed is not None else None
        return self.bm25.search(batch.column(C.TEXT).to_pylist(), self.k, mask)
