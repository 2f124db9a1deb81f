"""Hostile request bodies (hypothesis): wrong types, huge numbers, empty and 1 MB queries, bad
filters, invalid JSON, wrong content types. Every answer is a 4xx JSON error or a 200, never a
5xx, and the server still answers afterwards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import KEY, auth, copy_index, start

from searchpipe.serve.app import ServeConfig

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
filters = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "doc_id = 'd001'",
            "year >= 2020",
            "doc_id < 'd050' AND title ILIKE '%bee%'",
            "1=1; DROP TABLE docs",
            "read_csv('/etc/passwd') IS NOT NULL",
            "(SELECT count(*) FROM range(1000)) > 0",
            "doc_id = " + "'x' OR doc_id = " * 20 + "'y'",
            "((((((((((",
            "list_contains(tags, 1)",
        ]
    ),
)
search_fields = {
    "query": st.one_of(st.text(max_size=80), st.just(""), st.just(" " * 10), json_values),
    "k": st.one_of(st.integers(min_value=-5, max_value=10**12), json_values),
    "candidates": st.one_of(st.integers(min_value=-5, max_value=10**9), json_values),
    "retriever": st.one_of(st.sampled_from(["auto", "hybrid", "dense", "bm25", "x"]), json_values),
    "fusion": st.one_of(st.sampled_from(["rrf", "weighted", "RRF"]), json_values),
    "rrf_k": st.one_of(st.integers(min_value=-5, max_value=10**12), json_values),
    "dense_weight": st.one_of(st.floats(allow_nan=True, allow_infinity=True), json_values),
    "bm25_weight": st.one_of(st.floats(min_value=0, max_value=1e300), json_values),
    "filter": st.one_of(filters, json_values),
    "rerank": st.one_of(st.booleans(), json_values),
    "rerank_depth": st.one_of(st.integers(min_value=-5, max_value=10**6), json_values),
    "passages": json_values,
    "model": st.just("/etc/passwd"),
}
#: well-formed requests with hostile filters and edge settings: these reach the worker
searchable = st.fixed_dictionaries(
    {"query": st.text(min_size=1, max_size=40), "filter": filters},
    optional={
        "k": st.integers(min_value=1, max_value=100),
        "candidates": st.integers(min_value=1, max_value=1000),
        "retriever": st.sampled_from(["auto", "hybrid", "dense", "bm25"]),
        "fusion": st.sampled_from(["rrf", "weighted"]),
        "rrf_k": st.integers(min_value=1, max_value=10**6),
        "dense_weight": st.floats(min_value=0, max_value=1e300),
        "rerank": st.just(False),
    },
)
search_bodies = (
    searchable
    | st.fixed_dictionaries(
        {"query": st.text(min_size=1, max_size=40)},
        optional={k: v for k, v in search_fields.items() if k != "query"},
    )
    | st.dictionaries(st.sampled_from(sorted(search_fields)), json_values, max_size=6)
)


def _post(client: Any, path: str, body: bytes, content_type: str = "application/json") -> Any:
    return client.post(path, content=body, headers={"content-type": content_type, **auth()})


def _check(r: Any) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["code"] and error["message"] and "Traceback" not in r.text


@pytest.fixture(scope="module")
def client(sample_home: Path, tmp_path_factory: pytest.TempPathFactory):
    root = copy_index(sample_home, tmp_path_factory.mktemp("serve-fuzz"))
    c = start(ServeConfig(names=["sample"], index_root=root, api_key=KEY))
    yield c
    c.__exit__(None, None, None)


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(body=search_bodies)
def test_hostile_search_bodies_are_4xx(client, body: dict[str, Any]) -> None:
    r = _post(client, "/v1/indexes/sample/search", json.dumps(body).encode())
    _check(r)
    if r.status_code == 200:
        assert len(r.json()["hits"]) <= 100


@FUZZ
@given(
    body=st.one_of(
        st.fixed_dictionaries({"queries": st.lists(st.text(max_size=30), max_size=70)}),
        st.dictionaries(st.sampled_from(["queries", "k", "filter", "query"]), json_values),
    )
)
def test_hostile_batch_bodies_are_4xx(client, body: dict[str, Any]) -> None:
    _check(_post(client, "/v1/indexes/sample/search/batch", json.dumps(body).encode()))


@FUZZ
@given(
    body=st.one_of(
        json_values,
        st.fixed_dictionaries({"documents": st.lists(json_values, max_size=3)}),
        st.fixed_dictionaries(
            {
                "documents": st.lists(
                    st.fixed_dictionaries(
                        {"doc_id": json_values, "text": json_values},
                        optional={"title": json_values},
                    ),
                    max_size=2,
                )
            }
        ),
        st.fixed_dictionaries({"ids": st.one_of(json_values, st.lists(json_values, max_size=3))}),
    ),
    method=st.sampled_from(["POST", "DELETE"]),
)
def test_hostile_write_bodies_are_4xx(client, body: Any, method: str) -> None:
    r = client.request(
        method,
        "/v1/indexes/sample/documents",
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json", **auth()},
    )
    _check(r)


@FUZZ
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=100).map(str.encode),
        st.just(b'{"query": "x"'),
        st.just(b'{"query": "\xff\xfe"}'),
        st.just(b'{"query": NaN, "k": Infinity}'),
        st.just(b"[" * 5000 + b"]" * 5000),
    ),
    content_type=st.sampled_from(
        [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
            "application/json; charset=latin-1",
        ]
    ),
    path=st.sampled_from(
        [
            "/v1/indexes/sample/search",
            "/v1/indexes/sample/search/batch",
            "/v1/indexes/sample/documents",
            "/v1/indexes/../search",
        ]
    ),
)
def test_invalid_json_and_content_types_are_4xx(
    client, raw: bytes, content_type: str, path: str
) -> None:
    _check(_post(client, path, raw, content_type))


def test_huge_bodies_and_queries_and_the_server_still_answers(client) -> None:
    mb = "a" * 1_000_000
    _check(r := _post(client, "/v1/indexes/sample/search", json.dumps({"query": mb}).encode()))
    assert r.status_code == 413
    r = _post(client, "/v1/indexes/sample/search", json.dumps({"query": "x" * 5000}).encode())
    assert r.status_code == 422
    # a streamed body over the limit (no Content-Length) is cut off too
    r = client.post(
        "/v1/indexes/sample/search",
        content=iter([b'{"query": "', b"a" * 200_000, b"a" * 200_000, b'"}']),
        headers={"content-type": "application/json", **auth()},
    )
    assert r.status_code == 413
    r = _post(
        client,
        "/v1/indexes/sample/search",
        json.dumps({"query": "why do onions make you cry"}).encode(),
    )
    assert r.status_code == 200 and r.json()["hits"]
    assert client.get("/healthz").status_code == 200
