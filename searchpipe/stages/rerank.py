"""Rerank: score the top ``depth`` hits of each query with a cross-encoder and re-rank them.

Adds ``rerank_score`` (null below the depth) and ``first_stage_rank``; ``rank`` becomes the new
order: reranked hits first, then the rest in their first-stage order. The reranked head is
ordered by cross-encoder score, or with ``blend`` > 0 by a fusion of both opinions: a small
reranker trained on little data is noisy, and the fused order averages two different errors.
``fusion="rrf"`` fuses the ranks, ``1/(60 + rerank rank) + blend/(60 + first-stage rank)``;
``fusion="score"`` the scores, each min-max scaled within the query's head,
``rerank + blend * first-stage``.
All pairs of a record batch (many queries) are scored together, so the cross-encoder sees
full, length-sorted batches across queries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from searchpipe import columns as C
from searchpipe.arrow import append_column, joined_text
from searchpipe.config import TOKEN_BUDGET
from searchpipe.errors import InputError
from searchpipe.index import Index
from searchpipe.models.crossencoder import CrossEncoderScorer, rerank_usage
from searchpipe.models.precision import resolve_device, resolve_precision
from searchpipe.models.resolve import resolve_model
from searchpipe.stages.base import Stage

log = logging.getLogger(__name__)
BLEND_RRF_K = 60
DEFAULT_DEPTH = 20  # hits reranked per query when neither the settings nor the model say


def minmax(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values`` scaled to [0, 1] within each group (1 where a group's values are all equal).

    >>> minmax(np.array([2.0, 4.0, 3.0, 5.0]), np.array([0, 0, 0, 1])).tolist()
    [0.0, 1.0, 0.5, 1.0]
    """
    values = values.astype(np.float64)
    n = int(groups.max()) + 1 if len(groups) else 0
    lo = np.full(n, np.inf)
    hi = np.full(n, -np.inf)
    np.minimum.at(lo, groups, values)
    np.maximum.at(hi, groups, values)
    span = hi[groups] - lo[groups]
    return np.where(span > 0, (values - lo[groups]) / np.where(span > 0, span, 1.0), 1.0)


def blended(rerank_rank: np.ndarray, first_rank: np.ndarray, blend: float) -> np.ndarray:
    """Fused score of reranked hits from their two ranks (higher is better).

    >>> blended(np.array([1, 2]), np.array([2, 1]), 1.0).round(5).tolist()
    [0.03226, 0.03226]
    """
    return 1.0 / (BLEND_RRF_K + rerank_rank) + blend / (BLEND_RRF_K + first_rank)


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
        depth: int | None = None,
        precision: str = "auto",
        token_budget: int = TOKEN_BUDGET,
        max_length: int | None = None,
        blend: float | None = None,
        fusion: str | None = None,
        device: str = "auto",
        backend: str = "torch",
    ) -> None:
        if fusion not in (None, "rrf", "score"):
            raise InputError(f"rerank fusion {fusion!r} is not one of rrf, score")
        if blend is not None and blend < 0:
            raise InputError(f"rerank blend must be >= 0, got {blend}")
        self.model_name = model if isinstance(model, str) else model.ref.name
        self.scorer = model if isinstance(model, CrossEncoderScorer) else None
        self.index = index
        # a reranker we trained says how it is best used (chosen on its dev slice); explicit
        # settings win over it. Only a local folder can hold that record: reading it touches
        # no model, so a pipeline is still checked before anything loads
        folder = self.scorer.ref.path if self.scorer is not None else Path(self.model_name)
        usage = (rerank_usage(folder) if folder.is_dir() else None) or {}
        self.usage = usage
        self.depth = depth if depth is not None else int(usage.get("depth") or DEFAULT_DEPTH)
        self.blend = blend if blend is not None else float(usage.get("blend") or 0.0)
        self.fusion = fusion or ("rrf" if blend is not None else usage.get("fusion", "rrf"))
        #: the reranker lost to the first stage on dev and nobody asked for it anyway
        self.skip = usage.get("rerank") is False and depth is None
        if self.skip:
            log.warning(
                "reranker %s did not beat the first stage on its dev slice (%s), so it is not "
                "applied; pass a rerank depth to rerank anyway",
                self.model_name,
                usage.get("reason", "see its searchpipe_rerank.json"),
            )
        self.precision = precision
        self.token_budget = token_budget
        self.max_length = max_length
        self.device = device
        self.backend = backend
        self.pairs = 0

    def open(self) -> None:
        if self.scorer is None and not self.skip:
            self.scorer = CrossEncoderScorer(
                self.model_name,
                precision=self.precision,
                token_budget=self.token_budget,
                max_length=self.max_length,
                device=self.device,
                backend=self.backend,
            )

    def settings(self) -> dict[str, Any]:
        """Model identity without loading it: name, weights hash, precision, depth, length."""
        ref = self.scorer.ref if self.scorer is not None else resolve_model(self.model_name)
        return {
            "model": ref.name,
            "weights_sha256": ref.weights_sha256,
            "depth": self.depth,
            "precision": resolve_precision(self.precision, resolve_device(self.device)),
            "device": resolve_device(self.device),
            "max_length": self.max_length,
            "blend": self.blend,
            "fusion": self.fusion,
            "skip": self.skip,
            **({"backend": self.backend} if self.backend != "torch" else {}),
        }

    @property
    def truncated(self) -> int:
        return self.scorer.truncated if self.scorer is not None else 0

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        self.open()
        if self.skip:
            yield from batches
            return
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
        doc_rows = batch.column(C.DOC_ROW).to_numpy(zero_copy_only=False)[head]
        docs = self.index.take(doc_rows, (C.TITLE, C.TEXT))
        doc_text = joined_text(docs.to_batches()[0], (C.TITLE, C.TEXT)) if len(head) else []
        queries = pc.take(batch.column(C.QUERY_TEXT), pa.array(head)).to_pylist()
        scores = self.scorer.score(queries, doc_text)
        self.pairs += len(head)

        rerank = np.full(batch.num_rows, np.nan, dtype=np.float32)
        rerank[head] = scores
        groups = query_groups(batch.column(C.QUERY_ID))
        is_tail = ranks > self.depth
        head_key = -rerank.astype(np.float64)
        if self.blend > 0 and len(head) and self.fusion == "score":
            first = batch.column(C.SCORE).to_numpy(zero_copy_only=False)[head]
            g = groups[head]
            head_key[head] = -(minmax(scores, g) + self.blend * minmax(first, g))
        elif self.blend > 0 and len(head):
            # rank of each head hit by cross-encoder score within its query (ties: first stage)
            by_score = np.lexsort((-scores, groups[head]))
            g = groups[head][by_score]
            rerank_rank = np.empty(len(head))
            rerank_rank[by_score] = np.arange(len(head)) - np.searchsorted(g, g, side="left") + 1
            head_key[head] = -blended(rerank_rank, ranks[head].astype(np.float64), self.blend)
        # within each query: the reranked head by its key, then the tail by first-stage rank
        key = np.where(is_tail, ranks.astype(np.float64), head_key)
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
