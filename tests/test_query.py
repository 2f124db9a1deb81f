"""Retrieve, rerank and write on the sample index; evaluation against hand-computed metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from sentence_transformers import CrossEncoder

from searchpipe import columns as C
from searchpipe.api import Searcher, search
from searchpipe.eval.metrics import evaluate
from searchpipe.eval.runs import read_qrels, read_run, run_scores
from searchpipe.models.crossencoder import CrossEncoderScorer
from searchpipe.stages.ingest import read_queries
from searchpipe.stages.rerank import Rerank
from searchpipe.stages.write import Write


def test_retrieve_equals_brute_force_over_the_doc_store(sample_index, encoder) -> None:
    searcher = Searcher(sample_index, retriever="dense")
    queries = read_queries(Path(__file__).parents[1] / "searchpipe/data/sample/queries.jsonl")
    hits = searcher.search_batch(queries, k=5)
    assert hits.num_rows == 5 * queries.num_rows
    doc_vectors = encoder.encode(
        [
            f"{t} {x}".strip()
            for t, x in zip(
                sample_index.docs.column("title").to_pylist(),
                sample_index.docs.column("text").to_pylist(),
                strict=True,
            )
        ]
    )
    q_vectors = encoder.encode(queries.column("text").to_pylist())
    exact = np.argsort(-(q_vectors @ doc_vectors.T), axis=1)[:, :5]
    got = hits.column(C.DOC_ROW).to_numpy().reshape(-1, 5)
    assert (got[:, 0] == exact[:, 0]).all()
    assert hits.column(C.RANK).to_pylist()[:5] == [1, 2, 3, 4, 5]


def test_rerank_orders_by_cross_encoder_and_keeps_the_tail(
    sample_index, cross_encoder_dir: Path
) -> None:
    searcher = Searcher(sample_index, retriever="dense")
    queries = pa.table(
        {C.QUERY_ID: ["q1", "q2"], C.TEXT: ["why do onions make you cry", "red planet"]}
    )
    hits = searcher.search_batch(queries, k=10)
    scorer = CrossEncoderScorer(str(cross_encoder_dir), precision="fp32")
    out = pa.Table.from_batches(list(Rerank(scorer, sample_index, depth=4)(hits.to_batches())))
    assert out.num_rows == hits.num_rows
    baseline = CrossEncoder(str(cross_encoder_dir), device="cpu")
    for qid, text in [("q1", "why do onions make you cry"), ("q2", "red planet")]:
        rows = out.filter(pa.compute.equal(out.column(C.QUERY_ID), qid)).to_pylist()
        assert [r[C.RANK] for r in rows] == list(range(1, 11))
        head, tail = rows[:4], rows[4:]
        docs = sample_index.docs.take([r[C.DOC_ROW] for r in head]).to_pylist()
        expected = baseline.predict([(text, f"{d['title']} {d['text']}") for d in docs])
        np.testing.assert_allclose([r[C.RERANK_SCORE] for r in head], expected, atol=1e-5)
        assert [r[C.RERANK_SCORE] for r in head] == sorted(
            (r[C.RERANK_SCORE] for r in head), reverse=True
        )
        assert sorted(r[C.FIRST_STAGE_RANK] for r in head) == [1, 2, 3, 4]
        assert [r[C.FIRST_STAGE_RANK] for r in tail] == list(range(5, 11))
        assert all(r[C.RERANK_SCORE] is None for r in tail)


def test_run_scores_follow_rank_for_reranked_runs() -> None:
    table = pa.table(
        {
            C.QUERY_ID: ["a"] * 4 + ["b"] * 3,
            C.RANK: [1, 2, 3, 4, 1, 2, 3],
            C.SCORE: [0.1, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1],
            C.RERANK_SCORE: [5.0, 2.0, None, None, -1.0, None, None],
        }
    )
    scores = run_scores(table)
    assert list(scores[:4]) == sorted(scores[:4], reverse=True)
    assert list(scores[4:]) == sorted(scores[4:], reverse=True)
    assert scores[0] == 5.0 and scores[4] == -1.0


def test_metrics_match_hand_computation() -> None:
    qrels = {"q1": {"d1": 1, "d3": 1}, "q2": {"d9": 1}}
    run = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "q2": {"d5": 1.0}}
    res = evaluate(run, qrels, metrics=("ndcg@10", "mrr@10", "recall@100", "map"))
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert res["ndcg@10"] == pytest.approx((dcg / idcg + 0) / 2, abs=1e-6)
    assert res["mrr@10"] == pytest.approx((1 + 0) / 2)
    assert res["recall@100"] == pytest.approx((1 + 0) / 2)
    assert res["map"] == pytest.approx(((1 + 2 / 3) / 2 + 0) / 2, abs=1e-6)
    assert res["queries"] == 2


def test_batch_search_writes_arrow_and_trec_that_score_alike(
    sample_home: Path, monkeypatch, tmp_path: Path, sample_queries: Path, sample_qrels: Path
) -> None:
    monkeypatch.setenv("SEARCHPIPE_HOME", str(sample_home))
    arrow, trec = tmp_path / "run.arrow", tmp_path / "run.trec"
    summary = search(index="sample", queries=sample_queries, output=arrow, k=20, retriever="dense")
    assert summary["queries"] == 12 and summary["rows"] == 240
    table = ipc.open_file(str(arrow)).read_all()
    assert set(table.schema.names) >= {C.QUERY_ID, C.DOC_ID, C.SCORE, C.RANK}
    for _ in Write(trec)(table.to_batches()):
        pass
    assert read_run(trec).keys() == read_run(arrow).keys()
    a, b = evaluate(arrow, sample_qrels), evaluate(trec, sample_qrels)
    assert a == b and a["ndcg@10"] > 0.8
    line = trec.read_text().splitlines()[0].split()
    assert len(line) == 6 and line[1] == "Q0" and line[3] == "1"


def test_qrels_formats(tmp_path: Path) -> None:
    (tmp_path / "beir.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n")
    (tmp_path / "trec.txt").write_text("q1 0 d1 1\nq1 0 d2 0\n")
    assert (
        read_qrels(tmp_path / "beir.tsv")
        == read_qrels(tmp_path / "trec.txt")
        == {"q1": {"d1": 1, "d2": 0}}
    )


def test_top_level_api_names_import() -> None:
    import searchpipe
    import searchpipe.eval.metrics as ev

    assert (
        callable(ev.evaluate) and callable(searchpipe.build_index) and callable(searchpipe.Searcher)
    )
    assert all(hasattr(searchpipe, name) for name in searchpipe.__all__)


def _usage_copy(src: Path, dst: Path, usage: dict) -> Path:
    import json
    import shutil

    shutil.copytree(src, dst)
    (dst / "searchpipe_rerank.json").write_text(json.dumps(usage))
    return dst


def test_rerank_applies_the_blend_and_depth_its_folder_records(
    sample_index, cross_encoder_dir: Path, tmp_path: Path
) -> None:
    """Brute-force oracle: RRF of the two ranks, 1/(60 + rerank rank) + 2/(60 + first rank)."""
    folder = _usage_copy(
        cross_encoder_dir, tmp_path / "rr", {"rerank": True, "depth": 6, "blend": 2.0}
    )
    searcher = Searcher(sample_index, retriever="dense")
    queries = pa.table({C.QUERY_ID: ["q1", "q2"], C.TEXT: ["onions and tears", "red planet"]})
    hits = searcher.search_batch(queries, k=10)
    stage = Rerank(str(folder), sample_index, precision="fp32")
    assert (stage.depth, stage.blend, stage.skip) == (6, 2.0, False)
    out = pa.Table.from_batches(list(stage(hits.to_batches())))
    for qid in ("q1", "q2"):
        rows = out.filter(pa.compute.equal(out.column(C.QUERY_ID), qid)).to_pylist()
        head = [r for r in rows if r[C.FIRST_STAGE_RANK] <= 6]
        by_score = sorted(head, key=lambda r: (-r[C.RERANK_SCORE], r[C.FIRST_STAGE_RANK]))
        fused = {
            r[C.DOC_ROW]: 1 / (60 + i + 1) + 2.0 / (60 + r[C.FIRST_STAGE_RANK])
            for i, r in enumerate(by_score)
        }
        expected = sorted(head, key=lambda r: (-fused[r[C.DOC_ROW]], r[C.FIRST_STAGE_RANK]))
        assert [r[C.DOC_ROW] for r in rows[:6]] == [r[C.DOC_ROW] for r in expected]
        assert [r[C.FIRST_STAGE_RANK] for r in rows[6:]] == list(range(7, 11))
    # an explicit setting wins over the folder's
    assert Rerank(str(folder), sample_index, depth=3, blend=0.0).depth == 3


def test_a_reranker_saved_as_do_not_rerank_leaves_the_order_alone(
    sample_index, cross_encoder_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _usage_copy(
        cross_encoder_dir, tmp_path / "bad", {"rerank": False, "depth": 20, "blend": 0.0}
    )
    searcher = Searcher(sample_index, retriever="dense")
    queries = pa.table({C.QUERY_ID: ["q1"], C.TEXT: ["onions and tears"]})
    hits = searcher.search_batch(queries, k=10)
    stage = Rerank(str(folder), sample_index)
    assert stage.skip and "did not beat the first stage" in caplog.text
    out = pa.Table.from_batches(list(stage(hits.to_batches())))
    assert out.equals(hits)
    assert not Rerank(str(folder), sample_index, depth=5).skip  # asked for explicitly


def test_rerank_score_fusion_matches_a_hand_computed_blend(
    sample_index, cross_encoder_dir: Path, tmp_path: Path
) -> None:
    """Oracle: per query, minmax(rerank score) + 1.5 * minmax(first-stage score) over the head."""
    folder = _usage_copy(
        cross_encoder_dir,
        tmp_path / "rr",
        {"rerank": True, "depth": 8, "blend": 1.5, "fusion": "score"},
    )
    searcher = Searcher(sample_index, retriever="hybrid")
    queries = pa.table({C.QUERY_ID: ["q1", "q2"], C.TEXT: ["onions and tears", "red planet"]})
    hits = searcher.search_batch(queries, k=12)
    stage = Rerank(str(folder), sample_index, precision="fp32")
    assert (stage.depth, stage.blend, stage.fusion) == (8, 1.5, "score")
    out = pa.Table.from_batches(list(stage(hits.to_batches())))
    first_scores = {(r[C.QUERY_ID], r[C.DOC_ROW]): r[C.SCORE] for r in hits.to_pylist()}
    for qid in ("q1", "q2"):
        rows = out.filter(pa.compute.equal(out.column(C.QUERY_ID), qid)).to_pylist()
        head = [r for r in rows if r[C.FIRST_STAGE_RANK] <= 8]

        def scaled(values: list[float]) -> list[float]:
            lo, hi = min(values), max(values)
            return [(v - lo) / (hi - lo) if hi > lo else 1.0 for v in values]

        ours = scaled([r[C.RERANK_SCORE] for r in head])
        theirs = scaled([first_scores[(qid, r[C.DOC_ROW])] for r in head])
        value = {r[C.DOC_ROW]: a + 1.5 * b for r, a, b in zip(head, ours, theirs, strict=True)}
        expected = sorted(head, key=lambda r: (-value[r[C.DOC_ROW]], r[C.FIRST_STAGE_RANK]))
        assert [r[C.DOC_ROW] for r in rows[:8]] == [r[C.DOC_ROW] for r in expected]
