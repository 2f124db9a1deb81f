"""Embed: add a ``fixed_size_list<float32>[d]`` embedding column computed by a bi-encoder,
and each text's length in tokens (``tokens``, before truncation), so truncation is counted."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from searchpipe import columns as C
from searchpipe.arrow import append_column, joined_text, vectors_to_arrow
from searchpipe.config import TOKEN_BUDGET
from searchpipe.models.biencoder import BiEncoder
from searchpipe.stages.base import Stage


class Embed(Stage):
    """Add embeddings of the ``fields`` columns (joined by a space).

    >>> stage = Embed("minilm", fields=("title", "text"))
    >>> stage.requires
    ('title', 'text')
    """

    name = "embed"
    provides = (C.EMBEDDING, C.TOKENS)

    def __init__(
        self,
        model: str | BiEncoder = "minilm",
        fields: tuple[str, ...] = (C.TITLE, C.TEXT),
        precision: str = "auto",
        token_budget: int = TOKEN_BUDGET,
        batch_size: int = 256,
        max_length: int | None = None,
        device: str = "auto",
        backend: str = "torch",
    ) -> None:
        self.model_name = model if isinstance(model, str) else model.ref.name
        self.encoder = model if isinstance(model, BiEncoder) else None
        self.fields = tuple(fields)
        self.requires = self.fields
        self.precision = precision
        self.token_budget = token_budget
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.backend = backend

    def open(self) -> None:
        if self.encoder is None:
            self.encoder = BiEncoder(
                self.model_name,
                precision=self.precision,
                token_budget=self.token_budget,
                batch_size=self.batch_size,
                max_length=self.max_length,
                device=self.device,
                backend=self.backend,
            )

    def settings(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "model": self.model_name,
            "fields": self.fields,
            "precision": self.precision,
            **({"backend": self.backend} if self.backend != "torch" else {}),
        }
        if self.encoder is not None:
            s.update(identity=self.encoder.identity(), precision=self.encoder.precision)
        return s

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        self.open()
        assert self.encoder is not None
        for batch in batches:
            vectors = self.encoder.encode(joined_text(batch, self.fields))
            out = append_column(batch, C.EMBEDDING, vectors_to_arrow(vectors))
            lengths = getattr(self.encoder, "last_lengths", None)  # null: not reported
            tokens = (
                pa.array(lengths, pa.int32())
                if lengths is not None and len(lengths) == batch.num_rows
                else pa.nulls(batch.num_rows, pa.int32())
            )
            yield append_column(out, C.TOKENS, tokens)
