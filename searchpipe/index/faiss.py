"""The FAISS part of an index: which factory, how to make and train it, what it may hold.

``choose_factory`` picks a factory string by corpus size, following the faiss guidelines:
exact search while it is cheap, HNSW up to a few million vectors, IVF beyond. Every index is
inner product over normalised vectors (cosine), whatever the factory.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pyarrow as pa

from searchpipe.errors import InputError

EXACT_BELOW = 50_000
HNSW_BELOW = 2_000_000
FACTORY_EXAMPLES = "Flat, HNSW32, IVF256,Flat, IVF256,PQ16, HNSW32,SQ8, PQ32, auto"


def choose_factory(n_docs: int) -> str:
    """A factory string for ``n_docs`` vectors.

    >>> choose_factory(10_000), choose_factory(200_000), choose_factory(5_000_000)
    ('Flat', 'HNSW32', 'IVF8192,Flat')
    """
    if n_docs < EXACT_BELOW:
        return "Flat"
    if n_docs < HNSW_BELOW:
        return "HNSW32"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n_docs)))
    return f"IVF{nlist},Flat"


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


def train(index: Any, factory: str, sample: np.ndarray) -> None:
    """Train an IVF/PQ index on ``sample``; a corpus too small for the factory is the user's to fix."""
    try:
        index.train(sample)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1][:160]
        raise InputError(
            f"--index-type {factory!r} could not be trained on {len(sample)} vectors ({reason}); "
            "use fewer IVF lists or a Flat/HNSW index for a corpus this size"
        ) from None


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
