"""Embed: add a ``fixed_size_list<float32>[d]`` embedding column computed by a bi-encoder."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from searchpipe import columns as C
from searchpipe.models.biencoder import BiEncoder
from searchpipe.stages.base import Stage, append_column


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) float32 → fixed_size_list<float32>[d] without copying."""
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


class Embed(Stage):
    """Add embeddings of the ``fields`` columns (joined by a space).

    >>> stage = Embed("minilm", fields=("title", "text"))
    >>> stage.requires
    ('title', 'text')
    """

    name = "embed"
    provides = (C.EMBEDDING,)

    def __init__(
        self,
        model: str | BiEncoder = "minilm",
        fields: tuple[str, ...] = (C.TITLE, C.TEXT),
        precision: str = "auto",
        token_budget: int = 16384,
        batch_size: int = 256,
        max_length: int | None = None,
    ) -> None:
        self.model_name = model if isinstance(model, str) else model.ref.name
        self.encoder = model if isinstance(model, BiEncoder) else None
        self.fields = tuple(fields)
        self.requires = self.fields
        self.precision = precision
        self.token_budget = token_budget
        self.batch_size = batch_size
        self.max_length = max_length

    def open(self) -> None:
        if self.encoder is None:
            self.encoder = BiEncoder(
                self.model_name,
                precision=self.precision,
                token_budget=self.token_budget,
                batch_size=self.batch_size,
                max_length=self.max_length,
            )

    def settings(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "model": self.model_name,
            "fields": self.fields,
            "precision": self.precision,
        }
        if self.encoder is not None:
            s.update(identity=self.encoder.identity(), precision=self.encoder.precision)
        return s

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        self.open()
        assert self.encoder is not None
        for batch in batches:
            vectors = self.encoder.encode(joined_text(batch, self.fields))
            yield append_column(batch, C.EMBEDDING, vectors_to_arrow(vectors))
