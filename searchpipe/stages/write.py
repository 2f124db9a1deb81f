"""Write: save a stream of batches as Arrow IPC, Parquet, JSONL or a TREC run (by extension).

Writes go to a temporary file beside the target and are renamed into place when complete,
so an interrupted write never leaves a half-written output under the final name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from searchpipe import columns as C
from searchpipe.errors import InputError
from searchpipe.eval.runs import output_format, run_scores
from searchpipe.stages.base import Stage

RUN_TAG = "searchpipe"


class Write(Stage):
    """Write batches to ``path`` (Arrow, Parquet, JSONL or TREC) and pass them on unchanged."""

    name = "write"
    batchwise = False
    materialize = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format = output_format(self.path)
        if self.format == "trec":
            self.requires = (C.QUERY_ID, C.DOC_ID, C.RANK, C.SCORE)
        self.rows = 0

    def settings(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            if self.format in ("arrow", "parquet"):
                yield from self._table_file(batches, tmp)
            else:
                with open(tmp, "w", encoding="utf-8") as f:
                    for batch in batches:
                        if self.format == "jsonl":
                            for row in batch.to_pylist():
                                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                        else:
                            self._trec(batch, f)
                        self.rows += batch.num_rows
                        yield batch
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def _table_file(self, batches: Iterable[pa.RecordBatch], tmp: Path) -> Iterator[pa.RecordBatch]:
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq

        writer: Any = None
        try:
            for batch in batches:
                if writer is None:
                    writer = (
                        pq.ParquetWriter(str(tmp), batch.schema)
                        if self.format == "parquet"
                        else ipc.new_file(str(tmp), batch.schema)
                    )
                writer.write_batch(batch)
                self.rows += batch.num_rows
                yield batch
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise InputError(f"nothing to write to {self.path}: the stream was empty")

    def _trec(self, batch: pa.RecordBatch, f: Any) -> None:
        scores = run_scores(batch)
        qids = batch.column(C.QUERY_ID).to_pylist()
        dids = batch.column(C.DOC_ID).to_pylist()
        ranks = batch.column(C.RANK).to_pylist()
        f.writelines(
            f"{q} Q0 {d} {r} {s:.6f} {RUN_TAG}\n"
            for q, d, r, s in zip(qids, dids, ranks, scores, strict=True)
        )
