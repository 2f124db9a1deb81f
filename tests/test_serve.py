"""searchpipe serve through httpx (FastAPI's TestClient) against the app: every endpoint, answers
against ``Searcher.search`` (the oracle), micro-batching, back-pressure, auth, writes through
add/delete and a live version swap under load."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from serve_helpers import KEY, auth, copy_index, got, oracle, start

from searchpipe.api import add_documents
from searchpipe.cli import main
from searchpipe.config import SearchSettings
from searchpipe.index.store import Index, check_index
from searchpipe.serve.app import ServeConfig
from searchpipe.serve.models import BatchSearchResponse, SearchResponse

QUERIES = ["why do onions make you cry", "what makes Mars look red", "how do bees talk"]


@pytest.fixture(scope="module")
def served(sample_home: Path, cross_encoder_dir: Path):
    """An app on the shared sample index with a reranker and no API key (reads only)."""
    client = start(
        ServeConfig(
            names=["sample"], index_root=sample_home / "indexes", rerank=str(cross_encoder_dir)
        )
    )
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def writable(sample_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """An app with an API key on a private copy of the sample index (it takes writes)."""
    root = copy_index(sample_home, tmp_path_factory.mktemp("serve-rw"))
    client = start(ServeConfig(names=["sample"], index_root=root, api_key=KEY, poll_s=0.05))
    yield client, root
    client.__exit__(None, None, None)


def server_of(client: Any) -> Any:
    return client.app.state.server


def test_health_readiness_listing_and_docs(served, sample_home: Path) -> None:
    # ready means warm: the models a plain request uses are loaded, and only those
    loaded = set(server_of(served).models.encoders)
    assert {precision for _, precision in loaded} == {"fp32"} and len(loaded) == 1
    assert server_of(served).models.reranker is not None
    assert served.post("/v1/indexes/sample/search", json={"query": "bees"}).status_code == 200
    assert set(server_of(served).models.encoders) == loaded
    assert served.get("/healthz").json() == {"status": "ok"}
    ready = served.get("/readyz").json()
    manifest = Index.open(sample_home / "indexes" / "sample").manifest
    assert ready["status"] == "ready" and ready["indexes"] == {"sample": manifest["version"]}
    listing = served.get("/v1/indexes").json()
    assert listing["auth"] is False and listing["rerank"].endswith(Path(listing["rerank"]).name)
    [summary] = listing["indexes"]
    assert summary == served.get("/v1/indexes/sample").json()
    assert (summary["name"], summary["version"], summary["docs"], summary["dim"]) == (
        "sample",
        manifest["version"],
        300,
        384,
    )
    assert summary["bm25"] is True and summary["files"]["index.faiss"] > 0
    missing = served.get("/v1/indexes/nope")
    assert missing.status_code == 404 and "served: sample" in missing.json()["error"]["message"]
    paths = served.get("/openapi.json").json()["paths"]
    assert {"/v1/indexes/{name}/search", "/v1/indexes/{name}/documents"} <= set(paths)
    assert served.get("/docs").status_code == 200
    page = served.get("/")
    assert page.status_code == 200 and 'id="query"' in page.text
    assert "cdn" not in page.text.lower() and served.get("/static/app.js").status_code == 200


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"retriever": "dense", "k": 5},
        {"retriever": "bm25", "k": 7},
        {"retriever": "hybrid", "fusion": "weighted", "dense_weight": 2.0, "k": 4},
        {"filter": "doc_id < 'd100'", "k": 6},
        {"passages": True, "k": 5},
    ],
)
def test_search_equals_searcher(served, sample_index: Index, settings: dict[str, Any]) -> None:
    for query in QUERIES:
        r = served.post(
            "/v1/indexes/sample/search", json={"query": query, "rerank": False, **settings}
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        SearchResponse.model_validate(answer)  # the documented response model
        assert answer["index"] == "sample" and answer["version"] == sample_index.manifest["version"]
        assert got(answer) == oracle(sample_index, query, settings)
        assert set(answer["timings"]) == {"embed", "dense", "bm25", "fuse", "rerank"}
        assert answer["took_ms"] > 0
        first = answer["hits"][0]
        doc = sample_index.docs.to_pylist()[
            sample_index.docs.column("doc_id").to_pylist().index(first["doc_id"])
        ]
        assert first["title"] == doc["title"] and first["snippet"].strip("… ") in doc["text"]
        for a, b in first["highlights"]:
            assert first["snippet"][a:b].isalnum()
        if settings.get("filter"):
            assert all(h["doc_id"] < "d100" for h in answer["hits"])


def test_hybrid_scores_per_stage_and_rerank_equals_searcher(
    served, sample_index: Index, cross_encoder_dir: Path
) -> None:
    query = QUERIES[0]
    plain = served.post("/v1/indexes/sample/search", json={"query": query, "rerank": False}).json()
    hit = plain["hits"][0]
    assert (
        set(hit["scores"]) == {"dense", "bm25", "fused"} and hit["scores"]["fused"] == hit["score"]
    )
    assert plain["timings"]["rerank"] == 0 and plain["timings"]["embed"] > 0
    settings = {"rerank_depth": 5, "k": 8}
    reranked = served.post("/v1/indexes/sample/search", json={"query": query, **settings}).json()
    server = server_of(served)
    expected = oracle(
        sample_index, query, {**settings, "rerank": str(cross_encoder_dir)}, server.models.reranker
    )
    assert got(reranked) == expected
    assert reranked["timings"]["rerank"] > 0
    head = [h for h in reranked["hits"] if h["scores"]["first_stage_rank"] <= 5]
    assert len(head) == 5 and all(h["scores"]["rerank"] is not None for h in head)
    assert [h["scores"]["rerank"] for h in head] == sorted(
        (h["scores"]["rerank"] for h in head), reverse=True
    )


def test_batch_endpoint_answers_each_query_as_alone(served, sample_index: Index) -> None:
    body = {"queries": QUERIES, "k": 3, "retriever": "dense", "rerank": False}
    r = served.post("/v1/indexes/sample/search/batch", json=body)
    assert r.status_code == 200, r.text
    results = BatchSearchResponse.model_validate(r.json()).model_dump()["results"]
    assert [x["query"] for x in results] == QUERIES
    for query, result in zip(QUERIES, results, strict=True):
        expected = oracle(sample_index, query, {"k": 3, "retriever": "dense"})
        assert [h[0] for h in got(result)] == [e[0] for e in expected]
        assert [h[1] for h in got(result)] == pytest.approx([e[1] for e in expected], abs=1e-5)


def test_concurrent_queries_are_answered_in_one_pass(served, sample_index: Index) -> None:
    """Queries that wait together are embedded, searched and ranked as one batch, and each
    still gets its own answer (the oracle's)."""
    server = server_of(served)
    gate = threading.Event()
    blocker = server.worker.submit_task(gate.wait)  # hold the worker while 12 queries queue up
    settings = SearchSettings.model_validate({"k": 4, "precision": "fp32"})
    queries = [f"{q} {i}" for i in range(4) for q in QUERIES]
    futures = [server.worker.submit_search("sample", settings, q) for q in queries]
    gate.set()
    blocker.result(timeout=10)
    answers = [f.result(timeout=60) for f in futures]
    assert {a.batch for a in answers} == {len(queries)}
    for query, answer in zip(queries, answers, strict=True):
        expected = oracle(sample_index, query, {"k": 4})
        assert [h["doc_id"] for h in answer.hits] == [e[0] for e in expected]
        assert [h["score"] for h in answer.hits] == pytest.approx(
            [e[1] for e in expected], abs=1e-5
        )


def test_full_queue_is_503_with_retry_after_and_slow_requests_504(served) -> None:
    server = server_of(served)
    gate, running = threading.Event(), threading.Event()
    blocker = server.worker.submit_task(lambda: (running.set(), gate.wait()))
    assert running.wait(10)  # the worker holds the blocker, so the queue is all fillers
    settings = SearchSettings()
    fillers = []
    try:
        while True:  # fill the queue behind the blocked worker
            fillers.append(server.worker.submit_search("sample", settings, "filler"))
    except Exception as e:
        assert type(e).__name__ == "Busy"
    r = served.post("/v1/indexes/sample/search", json={"query": "bees"})
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "busy"
    for f in fillers:
        f.cancel()  # the worker skips cancelled jobs
    gate.set()
    blocker.result(timeout=10)
    # a request that waits longer than the timeout behind a busy worker: 504, and skipped
    gate, running = threading.Event(), threading.Event()
    blocker = server.worker.submit_task(lambda: (running.set(), gate.wait()))
    assert running.wait(10)
    timeout = server.config.request_timeout_s
    server.config.request_timeout_s = 0.3
    try:
        r = served.post("/v1/indexes/sample/search", json={"query": "bees"})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    finally:
        server.config.request_timeout_s = timeout
        gate.set()
    blocker.result(timeout=10)
    assert served.post("/v1/indexes/sample/search", json={"query": "bees"}).status_code == 200


def test_limits_and_bad_input_are_4xx_json(served) -> None:
    url = "/v1/indexes/sample/search"
    cases = [
        ({"query": "x", "k": 101}, 422),
        ({"query": ""}, 422),
        ({"query": "   "}, 422),
        ({"query": "x" * 2001}, 422),
        ({"query": "x", "filter": "year >"}, 400),
        ({"query": "x", "filter": "nosuchfield = 1"}, 400),
        ({"query": "x", "retriever": "magic"}, 422),
        ({"query": "x", "model": "/etc/passwd"}, 422),
        ({"query": "x", "unknown": 1}, 422),
    ]
    for body, status in cases:
        r = served.post(url, json=body)
        assert r.status_code == status, (body, r.text)
        assert set(r.json()["error"]) >= {"code", "message"}
    big = served.post(
        url,
        content=b'{"query": "' + b"a" * 300_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert big.status_code == 413
    assert (
        served.post(url, content=b"{nope", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert (
        served.post(
            url, content=b'{"query": "x"}', headers={"content-type": "text/plain"}
        ).status_code
        == 415
    )
    assert served.post(url, json={"queries": ["a"] * 65}).status_code == 422
    batch = served.post(url + "/batch", json={"queries": ["a"] * 65})
    assert batch.status_code == 422


def test_without_key_file_reads_are_open_and_writes_403(served) -> None:
    r = served.post(
        "/v1/indexes/sample/documents", json={"documents": [{"doc_id": "x", "text": "y"}]}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "writes_disabled"
    r = served.request("DELETE", "/v1/indexes/sample/documents", json={"ids": ["d001"]})
    assert r.status_code == 403
    assert served.get("/v1/indexes").status_code == 200


def test_with_key_file_reads_and_writes_need_the_key(writable) -> None:
    client, _ = writable
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    for headers in ({}, auth("wrong-key"), {"Authorization": "Basic abc"}):
        r = client.post("/v1/indexes/sample/documents", json={"documents": []}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert client.get("/v1/indexes", headers=headers).status_code == 401
        assert (
            client.post(
                "/v1/indexes/sample/search", json={"query": "x"}, headers=headers
            ).status_code
            == 401
        )
    assert client.get("/v1/indexes", headers=auth()).json()["auth"] is True
    assert (
        client.post("/v1/indexes/sample/search", json={"query": "bees"}, headers=auth()).status_code
        == 200
    )


def test_writes_go_through_add_and_delete_and_serve_the_new_version(writable) -> None:
    client, root = writable
    before = client.get("/v1/indexes/sample", headers=auth()).json()["version"]
    doc = {
        "doc_id": "new1",
        "title": "Axolotl",
        "text": "Axolotls regrow lost limbs in weeks.",
        "tag": "x",
    }
    r = client.post("/v1/indexes/sample/documents", json={"documents": [doc]}, headers=auth())
    assert r.status_code == 200, r.text
    added = r.json()
    assert (added["added"], added["committed"]) == (1, True)
    assert added["version"] == added["served_version"] == before + 1
    r = client.post(
        "/v1/indexes/sample/search", json={"query": "axolotl limbs", "k": 3}, headers=auth()
    )
    answer = r.json()
    assert answer["version"] == before + 1 and answer["hits"][0]["doc_id"] == "new1"
    assert answer["hits"][0]["metadata"] == {"tag": "x"}
    assert got(answer) == oracle(Index.open(root / "sample"), "axolotl limbs", {"k": 3})
    again = client.post("/v1/indexes/sample/documents", json={"documents": [doc]}, headers=auth())
    assert (again.json()["unchanged"], again.json()["committed"]) == (1, False)
    r = client.request(
        "DELETE", "/v1/indexes/sample/documents", json={"ids": ["new1", "zzz"]}, headers=auth()
    )
    assert (r.json()["deleted"], r.json()["not_found"], r.json()["version"]) == (1, 1, before + 2)
    hits = client.post(
        "/v1/indexes/sample/search", json={"query": "axolotl limbs"}, headers=auth()
    ).json()
    assert "new1" not in [h["doc_id"] for h in hits["hits"]] and hits["version"] == before + 2
    assert check_index(root / "sample")["ok"]
    bad = client.post(
        "/v1/indexes/sample/documents", json={"documents": [{"doc_id": "a"}]}, headers=auth()
    )
    assert bad.status_code == 422


def test_commits_by_another_writer_are_swapped_in_without_failing_a_request(
    writable, sample_corpus: Path, tmp_path: Path
) -> None:
    """Searches keep running while two versions are committed beside the server; none
    fails, each names its version, and its hits are that version's (the oracle's)."""
    client, root = writable
    server = server_of(client)
    old = server.registry.current["sample"]
    stop = threading.Event()
    answers: list[dict[str, Any]] = []
    failures: list[str] = []

    def load() -> None:
        while not stop.is_set():
            r = client.post(
                "/v1/indexes/sample/search", json={"query": QUERIES[0], "k": 5}, headers=auth()
            )
            if r.status_code != 200:
                failures.append(r.text)
            else:
                answers.append(r.json())

    expected: dict[int, list[tuple[str, float, int]]] = {}
    expected[old.version] = oracle(old.index, QUERIES[0], {"k": 5})
    thread = threading.Thread(target=load)
    thread.start()
    try:
        for i in range(2):
            more = tmp_path / f"more{i}.jsonl"
            more.write_text(
                f'{{"_id": "onion{i}", "title": "Onions {i}", "text": "Cutting onions makes you cry: '
                f'onions release a gas, syn-propanethial-S-oxide, batch {i}."}}\n'
            )
            version = add_documents("sample", more, root)["version"]
            expected[version] = oracle(Index.open(root / "sample"), QUERIES[0], {"k": 5})
            t0 = time.monotonic()
            while server.registry.served_version("sample") < version:
                assert time.monotonic() - t0 < 30, "the new version was not swapped in"
                time.sleep(0.02)
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert not failures
    seen = {a["version"] for a in answers}
    assert max(seen) == max(expected) and len(seen) >= 2
    for a in answers:
        assert [h[0] for h in got(a)] == [e[0] for e in expected[a["version"]]]
        assert [h[1] for h in got(a)] == pytest.approx(
            [e[1] for e in expected[a["version"]]], abs=1e-5
        )
    assert old.closed  # retired and no request holds it any more


def test_cli_serve_help_and_refusals(sample_home: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and "--api-key-file" in result.output
    result = runner.invoke(main, ["serve", "nope", "--index-dir", str(sample_home / "indexes")])
    assert result.exit_code == 2 and "no index" in result.output
    short = tmp_path / "key"
    short.write_text("abc\n")
    result = runner.invoke(
        main,
        [
            "serve",
            "sample",
            "--index-dir",
            str(sample_home / "indexes"),
            "--api-key-file",
            str(short),
        ],
    )
    assert result.exit_code == 2 and "shorter than 16" in result.output


def test_a_damaged_new_version_is_logged_and_the_old_one_keeps_serving(
    writable, caplog: pytest.LogCaptureFixture
) -> None:
    client, root = writable
    server = server_of(client)
    manifest = root / "sample" / "manifest.json"
    good = manifest.read_bytes()
    serving = server.registry.served_version("sample")
    tmp = manifest.with_suffix(".tmp")
    tmp.write_bytes(good.replace(b'"version": ', b'"version": 1', 1)[:-40])  # cut short
    with caplog.at_level("WARNING", logger="searchpipe.serve"):
        tmp.replace(manifest)
        try:
            t0 = time.monotonic()
            while "could not be opened" not in caplog.text:
                assert time.monotonic() - t0 < 10, "the watcher did not report the damage"
                time.sleep(0.02)
            r = client.post("/v1/indexes/sample/search", json={"query": "bees"}, headers=auth())
            assert r.status_code == 200 and r.json()["version"] == serving
        finally:
            tmp.write_bytes(good)
            tmp.replace(manifest)
    assert client.get("/readyz").status_code == 200


def test_cors_is_off_unless_an_origin_is_given(sample_home: Path) -> None:
    from fastapi.testclient import TestClient

    from searchpipe.serve.app import create_app

    preflight = {"Origin": "http://example.org", "Access-Control-Request-Method": "POST"}
    for cors, allowed in (([], None), (["http://example.org"], "http://example.org")):
        # no lifespan: the middleware answers preflights before any model is loaded
        app = create_app(
            ServeConfig(names=["sample"], index_root=sample_home / "indexes", cors=cors)
        )
        r = TestClient(app).options("/v1/indexes/sample/search", headers=preflight)
        assert r.headers.get("access-control-allow-origin") == allowed
