"""Chunk: split documents longer than the embedder reads into overlapping passages.

A model that reads 256 tokens sees only the start of a 3,000-token document; the rest is
lost to dense search (and, on a collection of long documents, hybrid falls below BM25). So
each document becomes passages that fit, counted in the embedder's own tokens, with the
title the model reads beside each passage taken off the budget:

- a document that fits is one passage, its whole text;
- otherwise the rest of the document is cut into as few passages as fit, of about equal
  size; each ends at the strongest boundary (a blank line, then a line break, then a
  sentence end, then a space; inside a word only when a word is longer than the budget)
  between half that size and the budget, the one nearest that size. The next passage
  starts at the strongest boundary within ``overlap`` tokens before that end, so a sentence
  cut in two is read whole by one of them. (Measured against filling each passage to the
  budget: SciFact hybrid nDCG@10 0.7217 against 0.7110; ``benchmarks/long_documents.py``.)

Every passage row keeps the document's ``doc_id``, title and metadata, its number
(``passage``), its character offsets (``start``, ``end``: ``text`` is exactly
``document[start:end]``) and the whole document's ``content_sha256``, which is what an
update compares to decide whether a document changed. The same passages feed dense search
and BM25; search then scores a document by its best passage (``stages.aggregate``).

>>> Chunk(tokenizer, tokens=256, overlap=32).provides
('passage', 'start', 'end', 'content_sha256')
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from searchpipe import columns as C
from searchpipe.arrow import append_column
from searchpipe.index.layout import content_sha256
from searchpipe.stages.base import Stage

#: boundary strengths, weakest first; a passage ends at the strongest one it can
WORD, SENTENCE, LINE, PARAGRAPH = 1, 2, 3, 4
_MARKS = (
    (WORD, re.compile(r"\s")),
    (SENTENCE, re.compile(r"(?<=[.!?。！？])[\"')\]]*\s")),
    (LINE, re.compile(r"\n")),
    (PARAGRAPH, re.compile(r"\n[^\S\n]*\n")),
)
#: the fewest text tokens a passage gets, however long the title
MIN_TOKENS = 16


def boundaries(text: str, offsets: np.ndarray) -> np.ndarray:
    """Strength of the boundary before each token (0: inside a word, or the first token).

    ``offsets``: (n, 2) character spans of the tokens in ``text``.
    """
    level = np.zeros(len(text) + 1, dtype=np.int8)
    for strength, pattern in _MARKS:
        for m in pattern.finditer(text):
            level[m.start() : m.end()] = strength
    n = len(offsets)
    out = np.zeros(n, dtype=np.int8)
    if n < 2:
        return out
    gap_start, gap_end = offsets[:-1, 1], offsets[1:, 0]
    # the strongest mark in the characters between one token's end and the next one's start
    prefix = [np.zeros(len(text) + 2, dtype=np.int32) for _ in range(PARAGRAPH)]
    for strength in range(1, PARAGRAPH + 1):
        prefix[strength - 1][1:] = np.cumsum(level >= strength)
    for strength in range(1, PARAGRAPH + 1):
        p = prefix[strength - 1]
        has = (p[gap_end] - p[gap_start]) > 0
        out[1:][has] = strength
    return out


def split(text: str, offsets: np.ndarray, budget: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the passages of ``text`` (see the module docstring).

    >>> split("one. two.", np.array([[0, 3], [3, 4], [5, 8], [8, 9]]), budget=2, overlap=0)
    [(0, 4), (5, 9)]
    """
    n = len(offsets)
    if n <= budget:
        return [(0, len(text))]
    strength = boundaries(text, offsets)
    spans = []
    start = 0
    while start < n:
        if n - start <= budget:
            end = n
        else:
            # passages of about equal size: the rest in as few passages as fit the budget
            parts = math.ceil((n - start - overlap) / max(budget - overlap, 1))
            size = min(budget, math.ceil((n - start - overlap) / parts) + overlap)
            lo, hi = start + max(size // 2, 1), start + budget  # an end in [lo, hi]
            window = strength[lo : hi + 1]
            best = int(window.max())
            # the boundary of the strongest kind nearest that size; none at all: the budget
            at = np.flatnonzero(window == best)
            end = lo + int(at[np.argmin(np.abs(lo + at - (start + size)))]) if best else hi
        spans.append((int(offsets[start, 0]), int(offsets[end - 1, 1])))
        if end >= n:
            break
        nxt = end
        if overlap > 0:
            lo = max(end - overlap, start + 1)
            window = strength[lo:end]
            if len(window) and window.max() > 0:
                # the earliest boundary of the strongest kind: the most overlap at a clean start
                nxt = lo + int(np.flatnonzero(window == window.max())[0])
        start = nxt
    return spans


class Chunk(Stage):
    """Split each document into passages of at most ``tokens`` tokens (title included).

    ``tokens=None`` keeps each document whole (one passage), for ``--no-chunk``.
    ``tokenizer`` is the embedder's own (a Hugging Face fast tokenizer).
    """

    name = "chunk"
    requires = (C.DOC_ID, C.TITLE, C.TEXT, C.METADATA)
    provides = (C.PASSAGE, C.START, C.END, C.CONTENT_SHA256)

    def __init__(
        self, tokenizer: Any, tokens: int | None, overlap: int = 32, tokenizer_id: str = ""
    ) -> None:
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.overlap = overlap
        #: names the tokenizer in the stage's fingerprint (the model's name and weights)
        self.tokenizer_id = tokenizer_id
        self.passages = 0
        self.documents = 0

    def settings(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "overlap": self.overlap, "tokenizer": self.tokenizer_id}

    def _token_offsets(self, texts: list[str]) -> list[np.ndarray]:
        enc = self.tokenizer(
            texts,
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["offset_mapping"]
        return [np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in enc]

    def spans(self, batch: pa.RecordBatch) -> list[list[tuple[int, int]]]:
        """Each document's passage spans."""
        texts = [t or "" for t in batch.column(C.TEXT).to_pylist()]
        if self.tokens is None:
            return [[(0, len(t))] for t in texts]
        titles = [t or "" for t in batch.column(C.TITLE).to_pylist()]
        title_tokens = [len(o) for o in self._token_offsets(titles)]
        out = []
        for text, offsets, n_title in zip(
            texts, self._token_offsets(texts), title_tokens, strict=True
        ):
            # the model reads [CLS] title text [SEP]
            budget = max(self.tokens - 2 - n_title, MIN_TOKENS)
            out.append(split(text, offsets, budget, min(self.overlap, budget // 2)))
        return out

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            spans = self.spans(batch)
            texts = batch.column(C.TEXT).to_pylist()
            doc = np.repeat(np.arange(batch.num_rows), [len(s) for s in spans])
            flat = [span for s in spans for span in s]
            starts = np.array([s for s, _ in flat], dtype=np.int32)
            ends = np.array([e for _, e in flat], dtype=np.int32)
            numbers = np.concatenate([np.arange(len(s), dtype=np.int32) for s in spans])
            take = pa.array(doc, pa.int64())
            out = batch.take(take)
            passage_text = pa.array(
                [(texts[d] or "")[s:e] for d, s, e in zip(doc, starts, ends, strict=True)],
                pa.string(),
            )
            out = append_column(out, C.TEXT, passage_text)
            out = append_column(out, C.PASSAGE, pa.array(numbers))
            out = append_column(out, C.START, pa.array(starts))
            out = append_column(out, C.END, pa.array(ends))
            out = append_column(out, C.CONTENT_SHA256, content_sha256(batch).take(take))
            self.documents += batch.num_rows
            self.passages += out.num_rows
            yield out
