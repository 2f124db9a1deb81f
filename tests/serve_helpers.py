"""Shared by the serve tests: start an app on an index, wait until ready, compare with Searcher."""

from __future__ import annotations

import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from searchpipe.api import Searcher
from searchpipe.config import SearchSettings
from searchpipe.index.store import Index
from searchpipe.serve.app import ServeConfig, create_app

KEY = "test-key-0123456789abcdef"


def copy_index(sample_home: Path, root: Path, name: str = "sample") -> Path:
    """A private copy of the shared sample index (tests that write must not touch it)."""
    shutil.copytree(sample_home / "indexes" / "sample", root / name)
    return root


def wait_ready(client: TestClient, timeout: float = 120.0) -> dict[str, Any]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = client.get("/readyz")
        if r.status_code == 200:
            return r.json()
        assert r.json()["error"]["code"] == "not_ready", r.text
        time.sleep(0.05)
    raise AssertionError("the server did not become ready")


def start(config: ServeConfig) -> TestClient:
    """A TestClient with the app's lifespan entered (call ``.__exit__`` to stop it)."""
    client = TestClient(create_app(config), raise_server_exceptions=False)
    client.__enter__()
    wait_ready(client)
    return client


@lru_cache(maxsize=1)
def fp32_encoder() -> Any:
    """The oracle's own MiniLM at the server's default precision, loaded once per session."""
    from searchpipe.models.biencoder import BiEncoder

    return BiEncoder("minilm", precision="fp32", max_length=256)


def oracle(
    index: Index, query: str, settings: dict[str, Any], reranker: Any = None
) -> list[tuple[str, float, int]]:
    """(doc_id, score, rank) of each hit ``Searcher.search`` gives for the same settings (at
    the server's default precision, fp32)."""
    s = SearchSettings.model_validate({"precision": "fp32", **settings})
    encoder = fp32_encoder()
    assert encoder.max_length == index.manifest["encoder"]["max_length"]
    hits = Searcher(index, s, encoder=encoder, reranker=reranker).search(query, s.k)
    return list(
        zip(
            hits.column("doc_id").to_pylist(),
            hits.column("score").to_pylist(),
            hits.column("rank").to_pylist(),
            strict=True,
        )
    )


def got(answer: dict[str, Any]) -> list[tuple[str, float, int]]:
    return [(h["doc_id"], h["score"], h["rank"]) for h in answer["hits"]]


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
