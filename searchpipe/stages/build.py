"""Build index: consume embedded documents into a new, atomically committed index version.

The stream is consumed once: doc store rows are appended to an Arrow IPC file and vectors
added to FAISS as they arrive, so memory holds one batch (plus a training sample for
IVF/PQ factories, which must be trained before vectors are added).

Beside the doc store, ``vectors.arrow`` keeps each row's content sha256 and its embedding, so
``searchpipe.update`` can add and delete documents later without embedding old ones again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from searchpipe import columns as C
from searchpipe.errors import InputError, RunError
from searchpipe.index import DOCS_FILE, FAISS_FILE, VECTORS_FILE, IndexWriter
from searchpipe.stages.base import Stage
from searchpipe.stages.embed import arrow_to_vectors, vectors_to_arrow

DOC_STORE_SCHEMA = pa.schema(
    [
        (C.DOC_ID, pa.string()),
        (C.TITLE, pa.string()),
        (C.TEXT, pa.string()),
        (C.METADATA, pa.string()),
    ]
)
CONTENT_SHA256 = "content_sha256"


def vectors_schema(dim: int) -> pa.Schema:
    return pa.schema([(CONTENT_SHA256, pa.string()), (C.EMBEDDING, pa.list_(pa.float32(), dim))])


def content_sha256(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    """Per row, the sha256 of what the doc store keeps of it (title, text, metadata).

    >>> b = pa.record_batch({"title": ["t"], "text": ["x"], "metadata": pa.array([None], pa.string())})
    >>> len(content_sha256(b)[0].as_py())
    64
    """
    cols = [batch.column(n).to_pylist() for n in (C.TITLE, C.TEXT, C.METADATA)]
    return pa.array(
        [
            hashlib.sha256(json.dumps(row, ensure_ascii=False).encode()).hexdigest()
            for row in zip(*cols, strict=True)
        ],
        pa.string(),
    )


def check_vectors(vectors: np.ndarray, dim: int, doc_ids: pa.Array) -> None:
    """Refuse embeddings of the wrong dimension or with NaN/inf, naming the first bad doc."""
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise InputError(
            f"embeddings have dimension {vectors.shape[1] if vectors.ndim == 2 else vectors.shape} "
            f"but the index expects {dim}"
        )
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise InputError(
            f"embedding of doc {doc_ids[bad].as_py()!r} (row {bad + 1} of its batch) has NaN or "
            "infinite values"
        )


FACTORY_EXAMPLES = "Flat, HNSW32, IVF256,Flat, IVF256,PQ16, HNSW32,SQ8, PQ32, auto"


def make_faiss_index(factory: str, dim: int) -> Any:
    """A FAISS index for inner product over normalised vectors, from a factory string."""
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1][:160]
        raise InputError(
            f"--index-type {factory!r} is not a FAISS factory string for {dim}-d vectors ({reason}); "
            f"examples: {FACTORY_EXAMPLES}"
        ) from None


def train_size(factory: str, n_docs: int) -> int:
    """How many vectors to train an IVF/PQ index on (faiss wants ~39+ points per centroid)."""
    nlist = max((int(m) for m in re.findall(r"IVF(\d+)", factory)), default=0)
    return min(n_docs, max(256 * 39, 64 * nlist, 10_000))


class BuildIndex(Stage):
    """Write embedded documents into a new version of ``indexes/NAME`` and commit it.

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
        n_docs: int,
        precision: str = "fp32",
        writer: IndexWriter | None = None,
    ) -> None:
        self.root = root
        #: an IndexWriter the caller already holds (read-modify-write under one lock)
        self.writer = writer
        self.factory = factory
        self.encoder = encoder
        self.manifest_fields = manifest_fields
        self.n_docs = n_docs
        self.precision = precision
        self.result: dict[str, Any] | None = None
        #: called as hook(writer, faiss_index) before commit; each returns manifest fields to add
        self.hooks: list[Any] = []

    def settings(self) -> dict[str, Any]:
        return {"factory": self.factory, "encoder": self.encoder}

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import faiss
        import pyarrow.ipc as ipc

        dim = int(self.encoder["dim"])
        index = make_faiss_index(self.factory, dim)
        need_training = not index.is_trained
        pending: list[np.ndarray] = []
        pending_n = 0
        wanted = train_size(self.factory, self.n_docs)
        with nullcontext(self.writer) if self.writer else IndexWriter(self.root) as writer:
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
                    doc_rows = pa.record_batch(
                        [batch.column(n) for n in DOC_STORE_SCHEMA.names], schema=DOC_STORE_SCHEMA
                    )
                    store.write_batch(doc_rows)
                    kept.write_batch(
                        pa.record_batch(
                            [content_sha256(doc_rows), vectors_to_arrow(vectors)],
                            schema=vectors_schema(dim),
                        )
                    )
                    if need_training:
                        pending.append(vectors.copy())
                        pending_n += len(vectors)
                        if pending_n >= wanted:
                            self._train(index, pending)
                            need_training = False
                            for v in pending:
                                index.add(v)
                            pending = []
                    else:
                        index.add(vectors)
                    yield batch
                if need_training:
                    if pending_n == 0:
                        raise InputError("nothing to index: the corpus is empty")
                    self._train(index, pending)
                    for v in pending:
                        index.add(v)
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
                "doc_count": int(index.ntotal),
                "search_params": {},
                **extra,
            }
            self.result = writer.commit(fields)

    def _train(self, index: Any, pending: list[np.ndarray]) -> None:
        sample = np.concatenate(pending)
        try:
            index.train(sample)
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1][:160]
            raise InputError(
                f"--index-type {self.factory!r} could not be trained on {len(sample)} vectors ({reason}); "
                "use fewer IVF lists or a Flat/HNSW index for a corpus this size"
            ) from None
