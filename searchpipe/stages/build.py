"""Build index: consume embedded documents into a new, atomically committed index version.

The stream is consumed once: doc store rows and vectors are appended to Arrow IPC files as
they arrive, and vectors added to FAISS, so memory holds one batch. IVF/PQ factories, which
must be trained before vectors are added, are trained once the stream ends, on a seeded
random sample of all rows read back from the staged ``vectors.arrow``, and then add them
from it, one batch at a time. With ``on_disk`` an IVF index is built in blocks written to
disk as they fill and merged into one inverted-list file (``index.faiss.OnDiskIVF``), so
memory holds one block, not the index.

Rows are passages (``stages.chunk``); rows of documents that were not chunked are stored as
one passage each. Beside the doc store, ``vectors.arrow`` keeps each row's embedding and its
document's content sha256, so ``searchpipe.api.update`` can add and delete documents later
without embedding old ones again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from searchpipe import columns as C
from searchpipe.arrow import arrow_to_vectors, vectors_to_arrow
from searchpipe.errors import InputError, RunError
from searchpipe.index.faiss import (
    OnDiskIVF,
    check_vectors,
    make_faiss_index,
    train,
    train_size,
)
from searchpipe.index.layout import (
    DOC_STORE_SCHEMA,
    DOCS_FILE,
    FAISS_FILE,
    IVFDATA_FILE,
    VECTORS_FILE,
    vectors_schema,
    whole_passages,
)
from searchpipe.index.store import BuildHook, IndexWriter
from searchpipe.stages.base import Stage

#: bytes of inverted-list entries (codes and ids) per block of an on-disk IVF build: 87,000
#: 384-d vectors for IVF,Flat, 2.4M for IVF,PQ48
ON_DISK_BLOCK = 128 << 20
BLOCKS_DIR = "ivf-blocks"  # inside the staging folder; merged and removed before commit
TRAIN_SEED = 0


def stored_vectors(path: Path) -> Iterator[np.ndarray]:
    """A ``vectors.arrow``'s embeddings, one record batch at a time (read, not memory-mapped,
    so that memory holds one batch however large the file)."""
    import pyarrow.ipc as ipc

    with pa.OSFile(str(path)) as f:
        reader = ipc.open_file(f)
        for i in range(reader.num_record_batches):
            yield arrow_to_vectors(reader.get_batch(i).column(C.EMBEDDING))


def training_sample(batches: Iterable[np.ndarray], rows: int, size: int) -> np.ndarray:
    """``size`` of ``rows`` rows drawn without replacement (seed ``TRAIN_SEED``), in row
    order: a corpus sorted by topic or source trains the centroids a shuffled one would."""
    picked = np.sort(np.random.default_rng(TRAIN_SEED).choice(rows, min(size, rows), replace=False))
    parts, offset = [], 0
    for vectors in batches:
        lo, hi = np.searchsorted(picked, [offset, offset + len(vectors)])
        parts.append(vectors[picked[lo:hi] - offset])
        offset += len(vectors)
    return np.concatenate(parts)


class BuildIndex(Stage):
    """Write embedded passages into a new version of ``indexes/NAME`` and commit it.

    ``result`` holds the committed manifest afterwards.
    """

    name = "build_index"
    requires = (C.DOC_ID, C.TITLE, C.TEXT, C.EMBEDDING)
    batchwise = False
    materialize = False

    def __init__(
        self,
        root: Path,
        factory: str,
        encoder: dict[str, Any],
        manifest_fields: dict[str, Any],
        n_rows: int,
        precision: str = "fp32",
        writer: IndexWriter | None = None,
        hooks: Iterable[BuildHook] = (),
        on_disk: bool = False,
    ) -> None:
        self.root = root
        #: an IndexWriter the caller already holds (read-modify-write under one lock)
        self.writer = writer
        self.factory = factory
        self.encoder = encoder
        self.manifest_fields = manifest_fields
        self.n_rows = n_rows
        self.precision = precision
        self.result: dict[str, Any] | None = None
        #: run on the staged version before commit (BM25, ANN tuning); each adds manifest fields
        self.hooks: list[BuildHook] = list(hooks)
        #: an IVF index whose inverted lists live in IVFDATA_FILE, built ON_DISK_BLOCK rows at a time
        self.on_disk = on_disk

    def settings(self) -> dict[str, Any]:
        return {"factory": self.factory, "encoder": self.encoder, "on_disk": self.on_disk}

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import faiss
        import pyarrow.ipc as ipc

        dim = int(self.encoder["dim"])
        index = make_faiss_index(self.factory, dim)
        need_training = not index.is_trained
        rows = 0
        # documents longer than the model reads are cut: counted, never silent
        limit = int(self.encoder.get("max_length") or 0) or np.iinfo(np.int32).max
        truncated = tokens_cut = measured = documents = 0
        with nullcontext(self.writer) if self.writer else IndexWriter(self.root) as writer:
            sink = (
                OnDiskIVF(index, writer.path(BLOCKS_DIR), ON_DISK_BLOCK) if self.on_disk else index
            )
            with (
                ipc.new_file(str(writer.path(DOCS_FILE)), DOC_STORE_SCHEMA) as store,
                ipc.new_file(str(writer.path(VECTORS_FILE)), vectors_schema(dim)) as kept,
            ):
                for batch in batches:
                    column = batch.column(C.EMBEDDING)
                    if not pa.types.is_fixed_size_list(column.type):
                        raise InputError(
                            f"column {C.EMBEDDING!r} has type {column.type}; expected "
                            f"fixed_size_list<float32>[{dim}]"
                        )
                    vectors = arrow_to_vectors(column)
                    check_vectors(vectors, dim, batch.column(C.DOC_ID))
                    if C.TOKENS in batch.schema.names and batch.column(C.TOKENS).null_count == 0:
                        lengths = batch.column(C.TOKENS).to_numpy(zero_copy_only=False)
                        over = lengths[lengths > limit] - limit
                        truncated += len(over)
                        tokens_cut += int(over.sum())
                        measured += len(lengths)
                    batch = whole_passages(batch)
                    doc_rows = pa.record_batch(
                        [batch.column(n) for n in DOC_STORE_SCHEMA.names], schema=DOC_STORE_SCHEMA
                    )
                    store.write_batch(doc_rows)
                    documents += int(pc.sum(pc.equal(doc_rows.column(C.PASSAGE), 0)).as_py() or 0)
                    kept.write_batch(
                        pa.record_batch(
                            [batch.column(C.CONTENT_SHA256), vectors_to_arrow(vectors)],
                            schema=vectors_schema(dim),
                        )
                    )
                    rows += len(vectors)
                    if not need_training:
                        sink.add(vectors)
                    yield batch
            if need_training:  # IVF/PQ: train on a seeded sample of all rows, then add them all
                if rows == 0:
                    raise InputError("nothing to index: the corpus is empty")
                stored = writer.path(VECTORS_FILE)
                sample = training_sample(
                    stored_vectors(stored), rows, train_size(self.factory, rows)
                )
                train(index, self.factory, sample)
                del sample
                for vectors in stored_vectors(stored):
                    sink.add(vectors)
            if isinstance(sink, OnDiskIVF):
                index = sink.merge(writer.path(IVFDATA_FILE))
            extra: dict[str, Any] = {}
            for hook in self.hooks:
                extra.update(hook(writer, index))
            try:
                faiss.write_index(index, str(writer.path(FAISS_FILE)))
            except RuntimeError as e:  # faiss reports a failed write (a full disk) this way
                reason = str(e).strip().splitlines()[-1][:160]
                raise RunError(
                    f"index {self.root.name}: writing {FAISS_FILE} failed ({reason}); nothing was "
                    "committed; free disk space and retry"
                ) from None
            fields = {
                **self.manifest_fields,
                "encoder": {**self.encoder, "precision": self.precision},
                "metric": "inner_product",
                "normalized": bool(self.encoder.get("normalize")),
                "factory": self.factory,
                **({"on_disk": True} if self.on_disk else {}),
                "doc_count": documents,
                "passage_count": int(index.ntotal),
                "search_params": {},
                **extra,
            }
            if measured and measured == int(index.ntotal):  # (an update re-embeds only some)
                fields["truncation"] = {
                    "max_length": limit,
                    "docs": truncated,
                    "of": measured,
                    "tokens_cut": tokens_cut,
                }
            self.result = writer.commit(fields)
