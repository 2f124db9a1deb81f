"""Long documents split into passages: exact offsets, best-passage aggregation, snippets,
updates by document, filters over passages.

Oracles: the model's own tokenizer (passage sizes), the document text (offsets), a hand
computed aggregation, brute-force inner products over every stored passage (document
scores), and a brute-force filter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from searchpipe import columns as C
from searchpipe.api import Searcher, build_index
from searchpipe.api.update import add_documents, delete_documents
from searchpipe.cli import main
from searchpipe.index.layout import content_sha256
from searchpipe.index.store import Index, check_index
from searchpipe.stages.aggregate import BestPassage
from searchpipe.stages.chunk import Chunk, split
from searchpipe.stages.snippet import highlights, terms

GROUP = 8  # sample documents joined into one long document


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from searchpipe.models.resolve import resolve_model

    return AutoTokenizer.from_pretrained(str(resolve_model("minilm").path))


def long_documents(sample_corpus: Path) -> list[dict[str, Any]]:
    """The sample corpus as long documents: each run of GROUP documents joined, paragraph by
    paragraph; ``year`` is metadata to filter on."""
    docs = [json.loads(line) for line in sample_corpus.read_text().splitlines()]
    out = []
    for g in range(0, len(docs), GROUP):
        part = docs[g : g + GROUP]
        out.append(
            {
                "_id": f"long{g // GROUP:02d}",
                "title": f"Collection {g // GROUP}",
                "text": "\n\n".join(f"{d['title']}. {d['text']}" for d in part),
                "year": 2000 + g // GROUP,
            }
        )
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def doc_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    return pa.record_batch(
        {
            C.DOC_ID: [r["_id"] for r in rows],
            C.TITLE: [r["title"] for r in rows],
            C.TEXT: [r["text"] for r in rows],
            C.METADATA: pa.array([None] * len(rows), pa.string()),
        }
    )


# ---------------------------------------------------------------- chunking


def test_passages_cut_the_text_exactly_and_fit_the_model(sample_corpus: Path, tokenizer) -> None:
    docs = long_documents(sample_corpus)[:12]
    docs += [
        {"_id": "short", "title": "Short", "text": "  Fits easily.  "},
        {"_id": "empty", "title": "Nothing", "text": ""},
        {"_id": "word", "title": "W", "text": "x" * 3000 + " tail"},  # one word past the budget
        {"_id": "cjk", "title": "東京", "text": "東京は日本の首都です。" * 60},
        {"_id": "accents", "title": "Çà", "text": " ".join(["Élève naïve café."] * 120)},
    ]
    batch = doc_batch(docs)
    tokens = 64
    out = next(iter(Chunk(tokenizer, tokens=tokens, overlap=16)([batch])))
    rows = out.to_pylist()
    digests = dict(
        zip(batch.column(C.DOC_ID).to_pylist(), content_sha256(batch).to_pylist(), strict=False)
    )
    for doc in docs:
        mine = [r for r in rows if r[C.DOC_ID] == doc["_id"]]
        assert [r[C.PASSAGE] for r in mine] == list(range(len(mine)))
        for r in mine:
            # the offsets cut the document's text exactly
            assert r[C.TEXT] == doc["text"][r[C.START] : r[C.END]]
            assert r[C.TITLE] == doc["title"] and r[C.CONTENT_SHA256] == digests[doc["_id"]]
            n = len(tokenizer(f"{doc['title']} {r[C.TEXT]}".strip())["input_ids"])
            assert n <= tokens, (doc["_id"], r[C.PASSAGE], n)
        # in order, overlapping or touching, and together they hold every non-space character
        covered = np.zeros(len(doc["text"]), bool)
        for a, b in zip(mine, mine[1:], strict=False):
            assert (
                a[C.START] < b[C.START] <= a[C.END] + 1
                or doc["text"][a[C.END] : b[C.START]].isspace()
            )
        for r in mine:
            covered[r[C.START] : r[C.END]] = True
        assert all(covered[i] or c.isspace() for i, c in enumerate(doc["text"])), doc["_id"]
    short = [r for r in rows if r[C.DOC_ID] in ("short", "empty")]
    assert [(r[C.TEXT], r[C.START]) for r in short] == [("  Fits easily.  ", 0), ("", 0)]
    # overlap: a long document's consecutive passages share text
    first = [r for r in rows if r[C.DOC_ID] == "long00"]
    assert len(first) >= 3 and all(
        a[C.END] > b[C.START] for a, b in zip(first, first[1:], strict=False)
    )


def test_passages_end_at_paragraphs_then_sentences() -> None:
    text = "Alpha beta gamma. Delta epsilon.\n\nZeta eta theta. Kappa mu nu."
    words = [(m.start(), m.end()) for m in re.finditer(r"\w+|[.]", text)]
    spans = split(text, np.array(words), budget=9, overlap=0)
    # the paragraph break (after 7 tokens) beats the sentence end (after 4)
    assert [text[s:e] for s, e in spans] == [
        "Alpha beta gamma. Delta epsilon.",
        "Zeta eta theta. Kappa mu nu.",
    ]
    spans = split(text, np.array(words), budget=6, overlap=0)
    assert text[spans[0][0] : spans[0][1]] == "Alpha beta gamma."


def test_without_chunking_each_document_is_one_whole_passage(sample_corpus: Path) -> None:
    docs = long_documents(sample_corpus)[:3]
    out = next(iter(Chunk(None, tokens=None)([doc_batch(docs)]))).to_pylist()
    assert [(r[C.TEXT], r[C.START], r[C.END]) for r in out] == [
        (d["text"], 0, len(d["text"])) for d in docs
    ]


# ---------------------------------------------------------------- aggregation


def test_best_passage_aggregation_equals_a_hand_computed_case() -> None:
    hits = pa.record_batch(
        {
            C.QUERY_ID: ["q1"] * 5 + ["q2"] * 3,
            C.DOC_ID: ["a", "b", "a", "c", "b", "c", "c", "a"],
            C.DOC_ROW: pa.array([0, 3, 1, 5, 4, 6, 5, 2], pa.int64()),
            C.SCORE: pa.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.9, 0.4, 0.3], pa.float32()),
            C.RANK: pa.array([1, 2, 3, 4, 5, 1, 2, 3], pa.int32()),
        }
    )
    out = next(iter(BestPassage(k=2)([hits]))).to_pydict()
    # q1: a (row 0, 0.9), b (row 3, 0.8); c is third and cut; q2: c (row 6), a (row 2)
    assert out[C.QUERY_ID] == ["q1", "q1", "q2", "q2"]
    assert out[C.DOC_ID] == ["a", "b", "c", "a"]
    assert out[C.DOC_ROW] == [0, 3, 6, 2]
    assert out[C.RANK] == [1, 2, 1, 2]


def test_highlights_mark_the_query_terms() -> None:
    text = "Chopping onions releases a gas; the onion's cells make eyes cry."
    spans = highlights("Why do onions make you cry?", text)
    assert [text[s:e] for s, e in spans] == ["onions", "onion", "make", "cry"]
    assert terms("the of and") == set()


# ---------------------------------------------------------------- search over passages


@pytest.fixture(scope="module")
def long_home(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    home = tmp_path_factory.mktemp("long")
    corpus = write_jsonl(home / "long.jsonl", long_documents(sample_corpus))
    build_index(
        corpus=corpus, name="long", chunk_tokens=64, index_root=home / "indexes", progress=False
    )
    return home


def best_per_document(
    index: Index, encoder: Any, query: str, allowed: Any = None
) -> tuple[list[tuple[str, float, int]], np.ndarray]:
    """Oracle: every stored passage scored against the query by brute force; per document its
    best passage, best documents first, as (doc id, score, row); and all passage scores."""
    passages = index.docs.to_pylist()
    vectors = encoder.encode([f"{p[C.TITLE]} {p[C.TEXT]}" for p in passages])
    scores = vectors @ encoder.encode([query])[0]
    best: dict[str, tuple[float, int]] = {}
    for row, (p, score) in enumerate(zip(passages, scores, strict=True)):
        if allowed is not None and not allowed(json.loads(p[C.METADATA])["year"]):
            continue
        if p[C.DOC_ID] not in best or score > best[p[C.DOC_ID]][0]:
            best[p[C.DOC_ID]] = (float(score), row)
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])
    return [(d, s, r) for d, (s, r) in ranked], scores


def test_documents_score_as_their_best_passage(long_home: Path, encoder) -> None:
    index = Index.open("long", long_home / "indexes")
    assert index.chunked and index.documents == 38 and len(index) > 4 * index.documents
    query = "how do honeybees tell each other where flowers are"
    hits = Searcher(index, retriever="dense", k=5, encoder=encoder).search(query).to_pylist()
    expected, scores = best_per_document(index, encoder, query)
    assert [h[C.DOC_ID] for h in hits] == [d for d, _, _ in expected[:5]]
    np.testing.assert_allclose(
        [h[C.SCORE] for h in hits], [s for _, s, _ in expected[:5]], atol=1e-4
    )
    texts = index.docs.column(C.TEXT).to_pylist()
    for h, (_, _, row) in zip(hits, expected, strict=False):
        # the snippet is the best passage, and its highlights are words of the query
        assert h[C.DOC_ROW] == row and h[C.TEXT] == texts[row]
        marked = {h[C.TEXT][s["start"] : s["end"]].lower() for s in h[C.HIGHLIGHTS]}
        assert all(terms(word) and terms(word) <= terms(query) for word in marked)
    assert hits[0][C.HIGHLIGHTS]
    # passages=True: the passages themselves, best first
    raw = Searcher(index, retriever="dense", k=5, passages=True, encoder=encoder).search(query)
    assert raw.column(C.DOC_ROW).to_pylist() == [int(r) for r in np.argsort(-scores)[:5]]


@pytest.mark.parametrize(
    ("clause", "allowed"),
    [("year >= 2030", lambda y: y >= 2030), ("year = 2005", lambda y: y == 2005)],
)
def test_filters_over_passages_equal_a_brute_force_filter(
    long_home: Path, encoder, clause: str, allowed: Any
) -> None:
    index = Index.open("long", long_home / "indexes")
    query = "volcano lava eruption"
    expected, _ = best_per_document(index, encoder, query, allowed)
    dense = Searcher(index, retriever="dense", k=10, filter=clause, encoder=encoder)
    assert [h[C.DOC_ID] for h in dense.search(query).to_pylist()] == [
        d for d, _, _ in expected[:10]
    ]
    # hybrid: documents, each once, all matching, min(k, matching) of them
    hits = Searcher(index, k=10, filter=clause, encoder=encoder).search(query).to_pylist()
    ids = [h[C.DOC_ID] for h in hits]
    assert len(ids) == len(set(ids)) == min(10, len(expected))
    assert all(allowed(json.loads(h[C.METADATA])["year"]) for h in hits)


def test_updates_work_by_document(
    tmp_path: Path, sample_corpus: Path, encoder, monkeypatch
) -> None:
    docs = long_documents(sample_corpus)[:6]
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    root = tmp_path / "indexes"
    build_index(corpus=corpus, name="ix", chunk_tokens=64, index_root=root, progress=False)
    before = Index.open("ix", root)
    old_rows = {
        d: before.docs.filter(pa.compute.equal(before.docs.column(C.DOC_ID), d)).num_rows
        for d in ("long01", "long03")
    }
    embedded: list[str] = []
    real = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda texts: embedded.extend(texts) or real(texts))
    changed = dict(docs[1], text=docs[1]["text"] + "\n\nA new closing paragraph about comets.")
    result = add_documents(
        "ix", write_jsonl(tmp_path / "more.jsonl", [docs[0], changed]), root, encoder=encoder
    )
    assert (result["added"], result["updated"], result["unchanged"]) == (0, 1, 1)
    after = Index.open("ix", root)
    mine = after.docs.filter(pa.compute.equal(after.docs.column(C.DOC_ID), "long01")).to_pylist()
    # only the changed document was chunked and embedded again, all of its passages
    assert sorted(embedded) == sorted(f"{p[C.TITLE]} {p[C.TEXT]}" for p in mine)
    assert [p[C.PASSAGE] for p in mine] == list(range(len(mine)))
    assert all(p[C.TEXT] == changed["text"][p[C.START] : p[C.END]] for p in mine)
    assert "comets" in mine[-1][C.TEXT]
    gone = delete_documents("ix", ["long03"], root)
    assert gone["deleted"] == 1 and gone["docs"] == 5
    final = Index.open("ix", root)
    assert "long03" not in set(final.docs.column(C.DOC_ID).to_pylist())
    assert len(final) == len(after) - old_rows["long03"]
    summary = check_index("ix", root)
    assert summary["docs"] == 5 and summary["passages"] == len(final)


def test_index_command_reports_passages(home: Path, sample_corpus: Path) -> None:
    corpus = write_jsonl(home / "long.jsonl", long_documents(sample_corpus)[:5])
    result = CliRunner().invoke(
        main, ["index", str(corpus), "--name", "p", "--chunk-tokens", "64", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["docs"] == 5 and summary["passages"] > 10 and summary["chunk_tokens"] == 64
    assert not (summary["truncation"] or {}).get("docs")  # passages fit: nothing is cut
    out = CliRunner().invoke(main, ["query", "p", "Venus atmosphere heat", "-k", "2"], color=True)
    assert out.exit_code == 0 and "\x1b[" in out.output  # highlighted terms


def test_tuning_sweeps_rank_passage_indexes_as_search_does(
    long_home: Path, sample_corpus: Path
) -> None:
    """The sweep that picks fusion and reranker use (``searchpipe tune``, training's dev
    checks) must see the order search returns: passages fused, then each document's best."""
    from searchpipe.training.sweep import FirstStage

    index = Index.open("long", long_home / "indexes")
    assert index.chunked
    docs = [json.loads(line) for line in sample_corpus.read_text().splitlines()]
    queries = pa.table(
        {C.QUERY_ID: [f"q{i}" for i in range(12)], C.TEXT: [d["title"] for d in docs[:12]]}
    )
    first = FirstStage(index, queries, k=10)
    ids = index.docs.column(C.DOC_ID).to_pylist()
    for retriever in ("dense", "bm25", "hybrid"):
        ranked, _, _ = first.run(retriever)
        hits = Searcher(index, retriever=retriever, k=10, candidates=10).search_batch(queries)
        expected: dict[str, list[str]] = {}
        pairs = zip(
            hits.column(C.QUERY_ID).to_pylist(), hits.column(C.DOC_ID).to_pylist(), strict=True
        )
        for q, d in pairs:
            expected.setdefault(q, []).append(d)
        assert {q: [ids[r] for r in rows] for q, rows in ranked.items()} == expected, retriever
