"""Lookup: give hits from elsewhere what our stages read, their doc store rows and query text.

A run from another system (a TREC file from Pyserini, say) names documents by id and queries
by id. To rerank it, each hit needs the row of its document in an index (``doc_row``: the
reranker reads that row's title and text; for a document split into passages, its first
passage) and the query's text (``query_text``, from a queries file). Columns the hits already
have are left as they are; a document or query that cannot be found is an error naming it.

>>> Lookup(index, queries="queries.jsonl").provides  # doctest: +SKIP
('doc_row', 'query_text')
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from searchpipe import columns as C
from searchpipe.arrow import append_column
from searchpipe.errors import InputError
from searchpipe.index import Index
from searchpipe.stages.base import Stage


class Lookup(Stage):
    """Add ``doc_row`` (from ``index``) and ``query_text`` (from ``queries``) to hits."""

    name = "lookup"
    requires = (C.QUERY_ID, C.DOC_ID)

    def __init__(self, index: Index | None = None, queries: str | Path | None = None) -> None:
        self.index = index
        self.queries = Path(queries) if queries is not None else None
        self.provides = tuple(
            c for c, src in ((C.DOC_ROW, index), (C.QUERY_TEXT, queries)) if src is not None
        )
        self._text: pa.Table | None = None

    def settings(self) -> dict[str, Any]:
        s: dict[str, Any] = {"queries": str(self.queries) if self.queries else None}
        if self.index is not None:
            s.update(index=self.index.manifest["name"], version=self.index.manifest["version"])
        return s

    def open(self) -> None:
        if self.queries is not None and self._text is None:
            from searchpipe.stages.ingest import read_queries

            self._text = read_queries(self.queries)

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        self.open()
        rows = None
        if self.index is not None:
            ids = self.index.docs.column(C.DOC_ID)
            first = pc.equal(self.index.docs.column(C.PASSAGE), 0)
            rows = (ids.filter(first), pc.indices_nonzero(first))
        for batch in batches:
            if rows is not None and C.DOC_ROW not in batch.schema.names:
                at = pc.index_in(batch.column(C.DOC_ID), value_set=rows[0].combine_chunks())
                self._missing(at, batch.column(C.DOC_ID), f"index {self.index.name}")  # type: ignore[union-attr]
                batch = append_column(batch, C.DOC_ROW, rows[1].take(at).cast(pa.int64()))
            if self._text is not None and C.QUERY_TEXT not in batch.schema.names:
                qids = self._text.column(C.QUERY_ID).combine_chunks()
                at = pc.index_in(batch.column(C.QUERY_ID), value_set=qids)
                self._missing(at, batch.column(C.QUERY_ID), f"queries {self.queries}")
                text = self._text.column(C.TEXT).combine_chunks().take(at)
                batch = append_column(batch, C.QUERY_TEXT, text)
            yield batch

    @staticmethod
    def _missing(at: pa.Array, ids: pa.Array, where: str) -> None:
        if at.null_count:
            lost = ids.filter(pc.is_null(at))
            raise InputError(
                f"{lost.length()} hit(s) name ids that {where} does not hold (e.g. "
                f"{lost[0].as_py()!r}); pass the index or queries file the run was made from"
            )
