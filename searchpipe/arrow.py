"""Arrow helpers every layer shares: embeddings as fixed-size lists, model text, added
columns, and reading an Arrow IPC file batch by batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc


def file_batches(path: str | Path) -> Iterator[pa.RecordBatch]:
    """The record batches of an Arrow IPC file, memory-mapped, one at a time."""
    with pa.memory_map(str(path)) as source:
        reader = ipc.open_file(source)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) float32 → fixed_size_list<float32>[d] without copying.

    >>> vectors_to_arrow(np.zeros((2, 3), np.float32)).type
    FixedSizeListType(fixed_size_list<item: float>[3])
    """
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def arrow_to_vectors(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """fixed_size_list<float32>[d] → (n, d) float32 view (no copy for a single chunk)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    d = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, d)


def joined_text(batch: pa.RecordBatch, fields: tuple[str, ...]) -> list[str]:
    """The text a model sees: the named columns joined by a space (empty parts skipped)."""
    if len(fields) == 1:
        return batch.column(fields[0]).to_pylist()
    cols = [pc.fill_null(batch.column(f), "") for f in fields]
    joined = pc.binary_join_element_wise(*cols, " ")
    return pc.utf8_trim_whitespace(joined).to_pylist()


def append_column(batch: pa.RecordBatch, name: str, values: pa.Array) -> pa.RecordBatch:
    """A new batch with ``name`` added (or replaced); the input batch is left as it was."""
    if name in batch.schema.names:
        i = batch.schema.get_field_index(name)
        return batch.set_column(i, name, values)
    return batch.append_column(name, values)
