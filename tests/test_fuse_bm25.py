"""BM25 against bm25s itself, and fusion against hand-computed RRF and weighted scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from searchpipe import columns as C
from searchpipe.index.bm25 import BM25Index
from searchpipe.stages.fuse import Fuse, fuse_hits
from searchpipe.stages.retrieve import RetrieveBM25


def hits(qids: list[str], rows: list[int], scores: list[float]) -> pa.RecordBatch:
    ranks, last, r = [], None, 0
    for q in qids:
        r = r + 1 if q == last else 1
        last = q
        ranks.append(r)
    return pa.record_batch(
        {
            C.QUERY_ID: qids,
            C.DOC_ROW: pa.array(rows, pa.int64()),
            C.SCORE: pa.array(scores, pa.float32()),
            C.RANK: pa.array(ranks, pa.int32()),
        }
    )


def test_rrf_matches_hand_computation() -> None:
    dense = hits(["a", "a", "a"], [10, 11, 12], [0.9, 0.8, 0.7])
    bm25 = hits(["a", "a"], [12, 13], [7.0, 3.0])
    q, rows, fused, per = fuse_hits([dense, bm25], [1.0, 1.0], "rrf", 60, k=10)
    expected = {10: 1 / 61, 11: 1 / 62, 12: 1 / 63 + 1 / 61, 13: 1 / 62}
    assert rows.tolist() == [12, 10, 11, 13] or rows.tolist() == [12, 10, 13, 11]
    for r, f in zip(rows.tolist(), fused.tolist(), strict=True):
        assert f == pytest.approx(expected[r])
    assert np.isnan(per[1][rows.tolist().index(10)]) and per[1][0] == pytest.approx(7.0)
    assert (q == 0).all()


def test_weighted_fusion_normalises_per_query() -> None:
    dense = hits(["a", "a", "b", "b"], [1, 2, 1, 3], [0.9, 0.5, 0.2, 0.1])
    bm25 = hits(["a", "a", "b"], [2, 3, 3], [10.0, 2.0, 4.0])
    q, rows, fused, _ = fuse_hits([dense, bm25], [0.7, 0.3], "weighted", 60, k=10)
    got = {(int(qq), int(r)): f for qq, r, f in zip(q, rows, fused, strict=True)}
    # query a: dense (0.9, 0.5) -> (1, 0); bm25 (10, 2) -> (1, 0)
    assert got[(0, 1)] == pytest.approx(0.7)
    assert got[(0, 2)] == pytest.approx(0.3)
    assert got[(0, 3)] == pytest.approx(0.0)
    # query b: dense (0.2, 0.1) -> (1, 0); bm25 has one hit -> 1
    assert got[(1, 1)] == pytest.approx(0.7)
    assert got[(1, 3)] == pytest.approx(0.3)


def test_fusion_keeps_top_k_per_query() -> None:
    dense = hits(["a"] * 5, [1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    q, rows, _, _ = fuse_hits([dense], [1.0], "rrf", 60, k=3)
    assert rows.tolist() == [1, 2, 3]


def test_bm25_stage_equals_bm25s_on_the_sample(sample_index, sample_corpus: Path) -> None:
    import bm25s
    import Stemmer

    docs = [json.loads(line) for line in sample_corpus.read_text().splitlines()]
    stemmer = Stemmer.Stemmer("english")
    reference = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    reference.index(
        bm25s.tokenize(
            [f"{d['title']} {d['text']}" for d in docs],
            stopwords="en",
            stemmer=stemmer,
            show_progress=False,
        ),
        show_progress=False,
    )
    queries = ["Why does chopping onions make you cry?", "en passant pawn capture"]
    ref_rows, ref_scores = reference.retrieve(
        bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False),
        k=5,
        show_progress=False,
    )
    scores, rows = BM25Index(sample_index.version_dir / "bm25").search(queries, 5)
    assert (rows == ref_rows).all()
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


def test_hybrid_stage_outputs_hits_with_source_scores(sample_index) -> None:
    from searchpipe.api import Searcher

    searcher = Searcher(sample_index, retriever="hybrid")
    out = searcher.search_batch(
        pa.table({C.QUERY_ID: ["q"], C.TEXT: ["How does the en passant rule work in chess?"]}), k=5
    )
    assert out.column(C.RANK).to_pylist() == [1, 2, 3, 4, 5]
    assert {"dense_score", "bm25_score"} <= set(out.schema.names)
    assert out.column(C.DOC_ID)[0].as_py() == "d196"
    stage = searcher.stages(5)[1]
    assert isinstance(stage, Fuse) and isinstance(stage.retrievers[1], RetrieveBM25)
