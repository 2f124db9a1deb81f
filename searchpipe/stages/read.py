"""Read: any table file as a stream of record batches, to run stages over files you have.

Arrow IPC (file or stream), Parquet and JSON Lines come in with their own columns; a TREC run
(``qid Q0 docid rank score tag``, from searchpipe or from any other system) becomes the hit
columns ``query_id, doc_id, rank, score``. Unlike ``Ingest`` it checks no corpus fields:
which columns a file must have is for the stages after it to say (the pipeline checks them
before any model loads, against the file's schema).

>>> Read("runs/bm25.trec").columns()  # doctest: +SKIP
['query_id', 'doc_id', 'rank', 'score']
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from searchpipe.errors import InputError
from searchpipe.eval.runs import TREC_SCHEMA, read_trec
from searchpipe.files import sha256_file
from searchpipe.stages.base import Source

FORMATS = {
    ".arrow": "arrow", ".ipc": "arrow", ".feather": "arrow", ".parquet": "parquet",
    ".jsonl": "jsonl", ".trec": "trec", ".run": "trec", ".txt": "trec",
}  # fmt: skip
BATCH_ROWS = 65_536


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"cannot tell the format of {path}; use .arrow, .parquet, .jsonl or a TREC run "
            "(.trec, .run, .txt)"
        )
    return fmt


class Read(Source):
    """Stream the rows of an Arrow, Parquet, JSON Lines or TREC run file."""

    name = "read"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"input {self.path} does not exist")
        self.format = file_format(self.path)
        self.provides = tuple(self.columns())

    def settings(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def fingerprint_source(self) -> str:
        return sha256_file(self.path)

    def output_columns(self, available: set[str]) -> set[str]:
        return set(self.provides)

    def columns(self) -> list[str]:
        """The file's column names, read from its schema (a TREC or JSONL file: parsed)."""
        return list(self._schema().names)

    def _schema(self) -> pa.Schema:
        if self.format == "trec":
            return TREC_SCHEMA
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return pq.read_schema(self.path)
        if self.format == "arrow":
            return self._arrow_reader().schema
        return self._table().schema

    def _arrow_reader(self) -> Any:
        import pyarrow.ipc as ipc

        try:
            try:
                return ipc.open_file(pa.memory_map(str(self.path)))
            except pa.ArrowInvalid:
                return ipc.open_stream(pa.memory_map(str(self.path)))
        except pa.ArrowInvalid as e:
            raise InputError(f"{self.path} is not an Arrow IPC file ({e})") from None

    def _table(self) -> pa.Table:
        if self.format == "trec":
            return read_trec(self.path)
        import pyarrow.json as pj

        try:
            return pj.read_json(self.path)
        except pa.ArrowInvalid as e:
            raise InputError(f"{self.path}: not JSON Lines ({str(e).splitlines()[0]})") from None

    def read(self) -> Iterator[pa.RecordBatch]:
        if self.format == "arrow":
            reader = self._arrow_reader()
            if hasattr(reader, "num_record_batches"):
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
            else:
                yield from reader
        elif self.format == "parquet":
            import pyarrow.parquet as pq

            yield from pq.ParquetFile(self.path).iter_batches(batch_size=BATCH_ROWS)
        else:
            yield from self._table().to_batches(max_chunksize=BATCH_ROWS)
