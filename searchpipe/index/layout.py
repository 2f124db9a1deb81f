"""What a version folder holds: file names and the schemas of its Arrow files.

Every module of ``searchpipe.index`` (and the stages that write an index) names the files
through these constants, so the layout is written down once.
"""

from __future__ import annotations

import hashlib
import json
import re

import pyarrow as pa

from searchpipe import columns as C

MANIFEST = "manifest.json"
FAISS_FILE = "index.faiss"
#: an on-disk IVF index's inverted lists (``IndexConfig.on_disk``), memory-mapped at search
IVFDATA_FILE = "index.ivfdata"
DOCS_FILE = "docs.arrow"
VECTORS_FILE = "vectors.arrow"
BM25_DIR = "bm25"
VERSION_DIR = re.compile(r"v\d{6}")

#: one row per passage (a document that fits the embedder is one passage, 0, of its whole text)
DOC_STORE_SCHEMA = pa.schema(
    [
        (C.DOC_ID, pa.string()),
        (C.TITLE, pa.string()),
        (C.TEXT, pa.string()),
        (C.METADATA, pa.string()),
        (C.PASSAGE, pa.int32()),
        (C.START, pa.int32()),
        (C.END, pa.int32()),
    ]
)
CONTENT_SHA256 = C.CONTENT_SHA256


def vectors_schema(dim: int) -> pa.Schema:
    """``vectors.arrow``: each doc store row's embedding, and the content sha256 of the
    document it is a passage of."""
    return pa.schema([(CONTENT_SHA256, pa.string()), (C.EMBEDDING, pa.list_(pa.float32(), dim))])


def whole_passages(rows: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
    """Document rows as doc store rows of one passage each: its whole text (an index of an
    older format, or rows that were not chunked); the document's digest is added when absent.

    >>> b = pa.record_batch({"title": ["t"], "text": ["abc"], "metadata": pa.array([None], pa.string())})
    >>> whole_passages(b).column("end").to_pylist()
    [3]
    """
    import pyarrow.compute as pc

    n = rows.num_rows
    extra = {
        C.PASSAGE: pa.array([0] * n, pa.int32()),
        C.START: pa.array([0] * n, pa.int32()),
        C.END: pc.utf8_length(pc.fill_null(rows.column(C.TEXT), "")).cast(pa.int32()),
    }
    if C.CONTENT_SHA256 not in rows.schema.names:
        extra[C.CONTENT_SHA256] = content_sha256(rows)
    for name, values in extra.items():
        if name not in rows.schema.names:
            rows = rows.append_column(name, values)
    return rows


def content_sha256(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    """Per document row, the sha256 of its title, text and metadata (what decides whether an
    update must embed it again).

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
