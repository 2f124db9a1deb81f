"""Snippet: what a reader of a hit sees, added to each hit from the doc store.

Each hit gets its title and metadata, the passage that matched (``text``: the best passage of
a document; a whole document when it was not split), where that passage sits in the
document (``passage``, ``start``, ``end``) and where the query's terms occur in it
(``highlights``: character spans into ``text``). Terms match as BM25 matches them, words
lower-cased and Snowball-stemmed, so "onions" highlights "onion"; bm25s's longer English
stopword list keeps "why" and "you" plain.

>>> terms("Why do onions make you cry?")
{'onion', 'make', 'cri'}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

import pyarrow as pa

from searchpipe import columns as C
from searchpipe.arrow import append_column
from searchpipe.index import Index
from searchpipe.index.bm25 import SETTINGS
from searchpipe.stages.base import Stage

WORD = re.compile(r"\w\w+")  # bm25s's token pattern
SPAN = pa.struct([("start", pa.int32()), ("end", pa.int32())])


@lru_cache(maxsize=1)
def _stemmer() -> tuple[Any, frozenset[str]]:
    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return Stemmer.Stemmer(SETTINGS["stemmer"]), frozenset(STOPWORDS_EN_PLUS)


def terms(query: str) -> set[str]:
    """The stemmed terms of ``query`` that BM25 would match."""
    stemmer, stop = _stemmer()
    words = [w for w in WORD.findall(query.lower()) if w not in stop]
    return set(stemmer.stemWords(words))


def highlights(query: str, text: str) -> list[tuple[int, int]]:
    """Character spans of the words of ``text`` that match a term of ``query``.

    >>> highlights("onions", "Chopping an onion releases")
    [(12, 17)]
    """
    wanted = terms(query)
    if not wanted or not text:
        return []
    stemmer, _ = _stemmer()
    found = list(WORD.finditer(text))
    stems = stemmer.stemWords([m.group().lower() for m in found])
    return [(m.start(), m.end()) for m, stem in zip(found, stems, strict=True) if stem in wanted]


class Snippet(Stage):
    """Add title, metadata, passage, its offsets and the query's highlighted terms to hits.

    >>> Snippet(index).provides  # doctest: +SKIP
    ('title', 'text', 'metadata', 'passage', 'start', 'end', 'highlights')
    """

    name = "snippet"
    requires = (C.QUERY_TEXT, C.DOC_ROW)
    provides = (C.TITLE, C.TEXT, C.METADATA, C.PASSAGE, C.START, C.END, C.HIGHLIGHTS)

    def __init__(self, index: Index) -> None:
        self.index = index

    def settings(self) -> dict[str, Any]:
        m = self.index.manifest
        return {"index": m["name"], "version": m["version"]}

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            docs = self.index.take(batch.column(C.DOC_ROW), tuple(self.provides[:-1]))
            for name in self.provides[:-1]:
                batch = append_column(batch, name, docs.column(name).combine_chunks())
            spans = [
                [{"start": s, "end": e} for s, e in highlights(q, t or "")]
                for q, t in zip(
                    batch.column(C.QUERY_TEXT).to_pylist(),
                    batch.column(C.TEXT).to_pylist(),
                    strict=True,
                )
            ]
            yield append_column(batch, C.HIGHLIGHTS, pa.array(spans, pa.list_(SPAN)))
