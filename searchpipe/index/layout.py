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
DOCS_FILE = "docs.arrow"
VECTORS_FILE = "vectors.arrow"
BM25_DIR = "bm25"
VERSION_DIR = re.compile(r"v\d{6}")

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
    """``vectors.arrow``: each doc store row's content sha256 and its embedding."""
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
