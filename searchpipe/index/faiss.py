"""The FAISS part of an index: which factory, how to make and train it, what it may hold.

``choose_factory`` picks a factory string by corpus size, following the faiss guidelines:
exact search while it is cheap, HNSW up to a few million vectors, IVF beyond. Every index is
inner product over normalised vectors (cosine), whatever the factory.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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


def check_on_disk(factory: str, dim: int) -> None:
    """Refuse ``on_disk`` for a factory without inverted lists to keep on disk."""
    import faiss

    index = make_faiss_index(factory, dim)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is None or isinstance(ivf, faiss.IndexIVFPQR):
        raise InputError(
            f"--on-disk keeps an IVF index's inverted lists on disk, but {factory!r} has none; "
            "pass an IVF factory (--index-type IVF4096,Flat or IVF4096,PQ48) or drop --on-disk"
        )


class OnDiskIVF:
    """Add vectors to a trained IVF index in blocks of about ``block_bytes`` of list entries,
    each written to ``folder`` as soon as it fills, then merge the blocks' inverted lists into
    one file (``faiss.contrib.ondisk.merge_ondisk``): memory holds the coarse quantizer and
    one block, never the whole index. Row ids are global, in the order rows were added."""

    def __init__(self, trained: Any, folder: Path, block_bytes: int) -> None:
        import faiss

        self.trained = trained
        self.folder = folder
        entry = faiss.extract_index_ivf(trained).code_size + 8  # a code and its int64 id
        self.block_rows = max(1, block_bytes // entry)
        self.block: Any = None
        self.blocks: list[Path] = []
        self.ntotal = 0

    def add(self, vectors: np.ndarray) -> None:
        import faiss

        if self.block is None:
            self.folder.mkdir(exist_ok=True)
            self.block = faiss.clone_index(self.trained)
        ids = np.arange(self.ntotal, self.ntotal + len(vectors), dtype=np.int64)
        self.block.add_with_ids(vectors, ids)
        self.ntotal += len(vectors)
        if self.block.ntotal >= self.block_rows:
            self._flush()

    def _flush(self) -> None:
        import faiss

        if self.block is not None and self.block.ntotal:
            path = self.folder / f"block-{len(self.blocks):05d}.index"
            faiss.write_index(self.block, str(path))
            self.blocks.append(path)
        self.block = None

    def merge(self, ivfdata: Path) -> Any:
        """The trained index, its inverted lists now in ``ivfdata``; the blocks are removed."""
        from faiss.contrib.ondisk import merge_ondisk

        self._flush()
        with _stdout_to_stderr():  # faiss prints "resizing FILE to N bytes" on stdout
            merge_ondisk(self.trained, [str(b) for b in self.blocks], str(ivfdata))
        for b in self.blocks:
            b.unlink()
        if self.folder.exists():
            self.folder.rmdir()
        return self.trained


def read_faiss(path: Path, ivfdata: Path) -> Any:
    """Read a FAISS index; an on-disk IVF index maps ``ivfdata`` read-only, wherever the
    folder now is (the file records the path it was built at, the staging folder)."""
    import faiss

    if not ivfdata.is_file():
        return faiss.read_index(str(path))
    index = faiss.read_index(str(path), faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
    ivf: Any = faiss.extract_index_ivf(index)
    lists: Any = faiss.downcast_InvertedLists(ivf.invlists)
    lists.filename = str(ivfdata)
    lists.do_mmap()
    return index


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what C code prints on stdout to stderr, so ``--json`` output stays clean."""
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
