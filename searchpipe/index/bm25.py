"""BM25: a lexical index beside FAISS (bm25s); ``RetrieveBM25`` in ``stages.retrieve`` searches it.

Documents are ``title + text``, lower-cased, English stopwords removed, Snowball-stemmed
(PyStemmer). The index is built from the doc store while a new index version is staged, so
it is covered by the manifest's checksums and committed with the vectors. Files are saved by
bm25s as NumPy arrays and JSON (no pickle).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from searchpipe import columns as C
from searchpipe.arrow import file_batches, joined_text
from searchpipe.index.layout import BM25_DIR, DOCS_FILE
from searchpipe.timing import timed

if TYPE_CHECKING:
    from searchpipe.index.store import IndexWriter

SETTINGS = {"stopwords": "en", "stemmer": "english", "k1": 1.5, "b": 0.75, "method": "lucene"}


def _tokenizer() -> Any:
    import Stemmer
    from bm25s.tokenization import Tokenizer

    return Tokenizer(stopwords=SETTINGS["stopwords"], stemmer=Stemmer.Stemmer(SETTINGS["stemmer"]))


def build_bm25(docs: Iterable[pa.RecordBatch], folder: Path) -> dict[str, Any]:
    """Tokenize the doc store batch by batch and save a BM25 index in ``folder``."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets DEBUG on import

    tokenizer = _tokenizer()
    ids: list[list[int]] = []
    for batch in docs:
        text = joined_text(batch, (C.TITLE, C.TEXT))
        ids.extend(
            tokenizer.tokenize(text, update_vocab=True, return_as="ids", show_progress=False)
        )
    model = bm25s.BM25(k1=SETTINGS["k1"], b=SETTINGS["b"], method=SETTINGS["method"])
    model.index(tokenizer.to_tokenized_tuple(ids), show_progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(str(folder), show_progress=False)
    tokenizer.save_vocab(str(folder))
    tokenizer.save_stopwords(str(folder))
    return {"bm25": {**SETTINGS, "vocab": len(tokenizer.get_vocab_dict()), "docs": len(ids)}}


class BuildBM25:
    """A build hook: build BM25 from the staged doc store, into the staged version."""

    def __call__(self, writer: IndexWriter, faiss_index: Any) -> dict[str, Any]:
        return build_bm25(file_batches(writer.path(DOCS_FILE)), writer.path(BM25_DIR))


class BM25Index:
    """A loaded BM25 index with its tokenizer."""

    def __init__(self, folder: Path) -> None:
        import bm25s

        self.model = bm25s.BM25.load(str(folder), mmap=True, show_progress=False)
        self.tokenizer = _tokenizer()
        self.tokenizer.load_vocab(str(folder))
        self.tokenizer.load_stopwords(str(folder))

    def search(
        self, queries: list[str], k: int, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, k) scores and doc store rows; rows without a matching term are -1.

        ``mask`` (0/1 per doc store row): only rows weighted 1 can match (a filter).
        """
        with timed("bm25"):
            ids = self.tokenizer.tokenize(
                queries, update_vocab=False, return_as="ids", show_progress=False
            )
            k = min(k, self.model.scores["num_docs"])
            rows, scores = self.model.retrieve(
                self.tokenizer.to_tokenized_tuple(ids),
                k=k,
                show_progress=False,
                n_threads=1,
                weight_mask=mask,
            )
        rows = np.where(scores > 0, rows, -1).astype(np.int64)
        return scores.astype(np.float32), rows
