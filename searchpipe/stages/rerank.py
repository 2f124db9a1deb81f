"""Rerank: score the top ``depth`` hits of each query with a cross-encoder and re-rank them.

Adds ``rerank_score`` (null below the depth) and ``first_stage_rank``; ``rank`` becomes the new
order: reranked hits first by cross-encoder score, then the rest in their first-stage order.
All pairs of a record batch (many queries) are scored together, so the cross-encoder sees
full, length-sorted batches across queries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from searchpipe import columns as C
from searchpipe.errors import InputError
from searchpipe.index import Index
from searchpipe.models.crossencoder import CrossEncoderScorer
from searchpipe.models.precision import resolve_precision
from searchpipe.models.resolve import resolve_model
from searchpipe.stages.base import Stage, append_column
from searchpipe.stages.embed import joined_text

log = logging.getLogger(__name__)


def query_groups(query_ids: pa.Array) -> np.ndarray:
    """Group number of each row; rows of one query must be contiguous."""
    ids = query_ids.to_numpy(zero_copy_only=False)
    starts = np.ones(len(ids), dtype=bool)
    starts[1:] = ids[1:] != ids[:-1]
    return np.cumsum(starts) - 1


class Rerank(Stage):
    """Re-rank retrieved hits with a cross-encoder.

    >>> Rerank("models/my-reranker", index, depth=20)  # doctest: +SKIP
    """

    name = "rerank"
    requires = (C.QUERY_ID, C.QUERY_TEXT, C.DOC_ROW, C.SCORE, C.RANK)
    provides = (C.RERANK_SCORE, C.FIRST_STAGE_RANK)

    def __init__(
        self,
        model: str | CrossEncoderScorer,
        index: Index,
        depth: int = 20,
        precision: str = "auto",
        token_budget: int = 16384,
        max_length: int | None = None,
    ) -> None:
        self.model_name = model if isinstance(model, str) else model.ref.name
        self.scorer = model if isinstance(model, CrossEncoderScorer) else None
        self.index = index
        self.depth = depth
        self.precision = precision
        self.token_budget = token_budget
        self.max_length = max_length
        self.pairs = 0

    def open(self) -> None:
        if self.scorer is None:
            self.scorer = CrossEncoderScorer(
                self.model_name,
                precision=self.precision,
                token_budget=self.token_budget,
                max_length=self.max_length,
            )

    def settings(self) -> dict[str, Any]:
        """Model identity without loading it: name, weights hash, precision, depth, length."""
        ref = self.scorer.ref if self.scorer is not None else resolve_model(self.model_name)
        return {
            "model": ref.name,
            "weights_sha256": ref.weights_sha256,
            "depth": self.depth,
            "precision": resolve_precision(self.precision),
            "max_length": self.max_length,
        }

    @property
    def truncated(self) -> int:
        return self.scorer.truncated if self.scorer is not None else 0

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        self.open()
        assert self.scorer is not None
        last_query: str | None = None
        for batch in batches:
            if batch.num_rows == 0:
                yield batch
                continue
            if last_query is not None and batch.column(C.QUERY_ID)[0].as_py() == last_query:
                raise InputError(
                    f"hits of query {last_query!r} span two record batches; rerank needs each "
                    "query's hits in one batch (as retrieve writes them)"
                )
            last_query = batch.column(C.QUERY_ID)[-1].as_py()
            yield self._rerank(batch)

    def _rerank(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        assert self.scorer is not None
        ranks = batch.column(C.RANK).to_numpy(zero_copy_only=False)
        head = np.flatnonzero(ranks <= self.depth)
        doc_rows = pc.take(batch.column(C.DOC_ROW), pa.array(head))
        docs = self.index.docs.take(doc_rows)
        doc_text = (
            joined_text(docs.combine_chunks().to_batches()[0], (C.TITLE, C.TEXT))
            if len(head)
            else []
        )
        queries = pc.take(batch.column(C.QUERY_TEXT), pa.array(head)).to_pylist()
        scores = self.scorer.score(queries, doc_text)
        self.pairs += len(head)

        rerank = np.full(batch.num_rows, np.nan, dtype=np.float32)
        rerank[head] = scores
        groups = query_groups(batch.column(C.QUERY_ID))
        is_tail = ranks > self.depth
        # within each query: reranked hits by descending score, then the tail by first-stage rank
        key = np.where(is_tail, ranks.astype(np.float64), -rerank.astype(np.float64))
        order = np.lexsort((key, is_tail, groups))
        new_groups = groups[order]
        group_start = np.searchsorted(new_groups, new_groups, side="left")
        new_rank = (np.arange(len(order)) - group_start + 1).astype(np.int32)

        out = batch.take(pa.array(order))
        out = append_column(out, C.FIRST_STAGE_RANK, out.column(C.RANK))
        out = append_column(out, C.RANK, pa.array(new_rank))
        return append_column(
            out, C.RERANK_SCORE, pa.array(rerank[order], mask=np.isnan(rerank[order]))
        )
