"""Metadata filters: every hit matches, a search returns min(k, matching) hits, and the hits
equal a brute-force filter-then-exact-search oracle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from searchpipe import columns as C
from searchpipe.api import Searcher, build_index
from searchpipe.arrow import arrow_to_vectors
from searchpipe.cli import main
from searchpipe.errors import InputError

SOURCES = ("pubmed", "arxiv", "blog")
FILTERS = {  # clause -> the same predicate in Python
    "year >= 2020 AND source = 'pubmed'": lambda m: m["year"] >= 2020 and m["source"] == "pubmed",
    "source = 'blog'": lambda m: m["source"] == "blog",
    "year = 2003": lambda m: m["year"] == 2003,
    "list_contains(tags, 'odd') AND year < 2010": lambda m: "odd" in m["tags"] and m["year"] < 2010,
    "published >= TIMESTAMP '2020-06-01'": lambda m: m["published"] >= "2020-06-01",
    "year > 3000": lambda m: False,
}


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path):
    import os

    root = tmp_path_factory.mktemp("filters")
    docs = []
    for i, line in enumerate(sample_corpus.read_text().splitlines()):
        d = json.loads(line)
        d.update(
            year=2000 + i % 25,
            source=SOURCES[i % 3],
            tags=["odd" if i % 2 else "even", f"group{i % 5}"],
            published=f"{2000 + i % 25}-{1 + i % 12:02d}-15T00:00:00Z",
        )
        docs.append(d)
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    old = os.environ.get("SEARCHPIPE_HOME")
    os.environ["SEARCHPIPE_HOME"] = str(root)
    try:
        build_index(corpus=corpus, name="flat", progress=False)
        build_index(corpus=corpus, name="hnsw", index_type="HNSW8", progress=False)
        yield root, {d["_id"]: d for d in docs}
    finally:
        if old is None:
            os.environ.pop("SEARCHPIPE_HOME")
        else:
            os.environ["SEARCHPIPE_HOME"] = old


QUERIES = ["why do onions make you cry", "red planet dust", "how do bees talk", "ocean tides"]


@pytest.mark.parametrize("name", ["flat", "hnsw"])
def test_dense_filter_equals_brute_force_filter_then_exact_search(
    filtered, name: str, encoder
) -> None:
    root, docs = filtered
    for clause, keep in FILTERS.items():
        searcher = Searcher(
            name, index_root=root / "indexes", encoder=encoder, retriever="dense", filter=clause
        )
        index = searcher.index
        ids = index.docs.column(C.DOC_ID).to_pylist()
        allowed = np.array([r for r, d in enumerate(ids) if keep(docs[d])], dtype=np.int64)
        vectors = arrow_to_vectors(index.vectors.column(C.EMBEDDING))
        q = searcher.encoder.encode(QUERIES)
        for text, qv in zip(QUERIES, q, strict=True):
            hits = searcher.search(text, k=10).column(C.DOC_ID).to_pylist()
            assert len(hits) == min(10, len(allowed)), clause
            assert all(keep(docs[h]) for h in hits), clause
            if len(allowed):
                exact = allowed[np.argsort(-(vectors[allowed] @ qv))[:10]]
                expected = [ids[r] for r in exact]
                if name == "flat":
                    assert hits == expected, clause
                else:
                    assert len(set(hits) & set(expected)) >= 0.9 * len(expected), clause


def test_hybrid_and_bm25_hits_all_match_the_filter(filtered, encoder) -> None:
    root, docs = filtered
    clause = "year >= 2020 AND source = 'pubmed'"
    keep = FILTERS[clause]
    for retriever in ("hybrid", "bm25"):
        searcher = Searcher(
            "flat", index_root=root / "indexes", encoder=encoder, retriever=retriever, filter=clause
        )
        hits = searcher.search_batch(
            pa.table({C.QUERY_ID: [str(i) for i in range(len(QUERIES))], C.TEXT: QUERIES}), k=50
        )
        assert hits.num_rows > 0
        assert all(keep(docs[d]) for d in hits.column(C.DOC_ID).to_pylist()), retriever


def test_bad_filters_exit_2_and_list_the_columns(filtered) -> None:
    root, _ = filtered
    runner = CliRunner()
    base = ["query", "flat", "bees", "--index-dir", str(root / "indexes"), "--filter"]
    unknown = runner.invoke(main, [*base, "yeer > 2000"])
    assert unknown.exit_code == 2 and "yeer" in unknown.output
    assert "year (int64)" in unknown.output and "tags (list<item: string>)" in unknown.output
    wrong = runner.invoke(main, [*base, "year > 'soon'"])
    assert wrong.exit_code == 2 and "soon" in wrong.output
    ok = runner.invoke(main, [*base, "source = 'arxiv'", "-k", "3", "--json"])
    assert ok.exit_code == 0, ok.output
    assert len(json.loads(ok.stdout)["results"][0]["hits"]) == 3


def test_a_field_of_mixed_types_is_named() -> None:
    from searchpipe.index.filters import metadata_table

    docs = pa.table(
        {
            "doc_id": ["a", "b"],
            "title": ["", ""],
            "metadata": ['{"year": 2020}', '{"year": "soon"}'],
        }
    )
    with pytest.raises(InputError, match="'year' mixes types.*'a' has 2020.*'b' has 'soon'"):
        metadata_table(docs)
