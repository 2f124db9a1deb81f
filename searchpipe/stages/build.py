"""Build index: consume embedded documents into a new, atomically committed index version.

The stream is consumed once: doc store rows are appended to an Arrow IPC file and vectors
added to FAISS as they arrive, so memory holds one batch (plus a training sample for
IVF/PQ factories, which must be trained before vectors are added).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from searchpipe import columns as C
from searchpipe.errors import InputError
from searchpipe.index import DOCS_FILE, FAISS_FILE, IndexWriter
from searchpipe.stages.base import Stage
from searchpipe.stages.embed import arrow_to_vectors

DOC_STORE_SCHEMA = pa.schema(
    [
        (C.DOC_ID, pa.string()),
        (C.TITLE, pa.string()),
        (C.TEXT, pa.string()),
        (C.METADATA, pa.string()),
    ]
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
    ) -> None:
        self.root = root
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
        with IndexWriter(self.root) as writer:
            with ipc.new_file(str(writer.path(DOCS_FILE)), DOC_STORE_SCHEMA) as store:
                for batch in batches:
                    vectors = arrow_to_vectors(batch.column(C.EMBEDDING))
                    if vectors.shape[1] != dim:
                        raise InputError(
                            f"embeddings have dimension {vectors.shape[1]} but the index expects {dim}"
                        )
                    if not np.isfinite(vectors).all():
                        bad = int(np.argwhere(~np.isfinite(vectors).all(axis=1))[0][0])
                        raise InputError(
                            f"embedding of doc {batch.column(C.DOC_ID)[bad].as_py()!r} has NaN or infinite values"
                        )
                    store.write_batch(
                        pa.record_batch(
                            [batch.column(n) for n in DOC_STORE_SCHEMA.names],
                            schema=DOC_STORE_SCHEMA,
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
            faiss.write_index(index, str(writer.path(FAISS_FILE)))
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
