"""Cut: keep each query's top ``k`` hits.

Retrieval, fusion and rerank work on a deeper candidate list than the user asks for (fusing
two top-3 lists is not the top 3 of a fusion); this stage trims the result to ``k`` at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from searchpipe import columns as C
from searchpipe.stages.base import Stage


class Cut(Stage):
    """Keep the hits ranked ``k`` or better (ranks are per query, 1-based).

    >>> Cut(10).requires
    ('query_id', 'rank')
    """

    name = "cut"
    requires = (C.QUERY_ID, C.RANK)

    def __init__(self, k: int) -> None:
        self.k = k

    def settings(self) -> dict[str, Any]:
        return {"k": self.k}

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield batch.filter(pc.less_equal(batch.column(C.RANK), self.k))
