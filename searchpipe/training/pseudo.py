"""Training data without labels: pseudo-queries cut from the corpus itself.

Most users have a corpus and no judgements. For each sampled document we make one query and
let that document be its positive:

- a document with a title of a few words is asked by its title, and shown without it;
- otherwise one of its sentences (the Inverse Cloze Task of Lee et al., 2019) is the query,
  and the document is shown with that sentence cut out, so the model must match meaning, not
  copy a string.

Hard negatives then come from our hybrid index with the usual false-negative guard, and a
dev slice of the pseudo-queries is held out for model selection, exactly as with qrels. No
qrels file is read.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from searchpipe import columns as C

SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
MIN_WORDS = 4  # a shorter sentence says too little to be a query
MIN_TITLE_WORDS = 3  # nor does a one- or two-word title ("Mercury")
MAX_WORDS = 48  # a longer sentence is a passage, not a query


def sentences(text: str) -> list[str]:
    """``text`` split after sentence-ending punctuation followed by a capital or digit.

    >>> sentences("Bats fly at night. They use echoes! Fine.")
    ['Bats fly at night.', 'They use echoes!', 'Fine.']
    """
    return [s for s in SENTENCE.split(text.strip()) if s]


def pseudo_query(title: str, text: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """(query, what the positive shows) for one document, or None when it has no usable part."""
    if title and MIN_TITLE_WORDS <= len(title.split()) <= MAX_WORDS:
        return title, text
    parts = sentences(text)
    usable = [i for i, s in enumerate(parts) if MIN_WORDS <= len(s.split()) <= MAX_WORDS]
    if len(parts) < 2 or not usable:
        return None
    i = int(rng.choice(usable))
    return parts[i], " ".join(parts[:i] + parts[i + 1 :])


def pseudo_split(
    corpus: Path, max_queries: int, seed: int
) -> tuple[pa.Table, dict[str, dict[str, int]], dict[str, str]]:
    """Pseudo-queries of up to ``max_queries`` documents sampled from ``corpus``.

    Returns the queries (``query_id``, ``text``), their one-positive qrels, and per query the
    text its positive shows in training (the document without the query's words).
    """
    from searchpipe.stages.ingest import Ingest

    rng = np.random.default_rng(seed)
    docs: list[tuple[str, str, str]] = []
    for batch in Ingest(corpus).read():
        docs += zip(
            batch.column(C.DOC_ID).to_pylist(),
            [t or "" for t in batch.column(C.TITLE).to_pylist()],
            batch.column(C.TEXT).to_pylist(),
            strict=True,
        )
    order = rng.permutation(len(docs))
    ids: list[str] = []
    texts: list[str] = []
    qrels: dict[str, dict[str, int]] = {}
    shown: dict[str, str] = {}
    for i in order:
        doc_id, title, text = docs[int(i)]
        made = pseudo_query(title, text, rng)
        if made is None:
            continue
        qid = f"pseudo-{doc_id}"
        ids.append(qid)
        texts.append(made[0])
        qrels[qid] = {doc_id: 1}
        shown[qid] = made[1]
        if len(ids) >= max_queries:
            break
    return pa.table({C.QUERY_ID: ids, C.TEXT: texts}), qrels, shown
