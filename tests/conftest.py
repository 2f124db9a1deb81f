"""Shared fixtures: the bundled sample corpus, one built sample index, a local cross-encoder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "searchpipe" / "data" / "sample"
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def sample_corpus() -> Path:
    return SAMPLE / "corpus.jsonl"


@pytest.fixture(scope="session")
def sample_queries() -> Path:
    return SAMPLE / "queries.jsonl"


@pytest.fixture(scope="session")
def sample_qrels() -> Path:
    return SAMPLE / "qrels.tsv"


@pytest.fixture(scope="session")
def scifact() -> Path:
    path = SHARED / "scifact"
    if not (path / "corpus.jsonl").is_file():
        pytest.skip(
            f"SciFact not found at {path}: these checks need ../shared/data/scifact beside the repo"
        )
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private SEARCHPIPE_HOME (indexes/ and runs/ inside it)."""
    monkeypatch.setenv("SEARCHPIPE_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def encoder():
    """The bundled MiniLM on our fast path, loaded once per test session."""
    from searchpipe.models.biencoder import BiEncoder

    return BiEncoder("minilm")


@pytest.fixture(scope="session")
def sample_home(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    """A SEARCHPIPE_HOME holding the sample corpus indexed once (exact Flat index)."""
    from searchpipe.api import build_index

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("SEARCHPIPE_HOME")
    os.environ["SEARCHPIPE_HOME"] = str(home)
    try:
        build_index(corpus=sample_corpus, name="sample", progress=False)
    finally:
        if old is None:
            os.environ.pop("SEARCHPIPE_HOME")
        else:
            os.environ["SEARCHPIPE_HOME"] = old
    return home


@pytest.fixture
def sample_index(sample_home: Path, monkeypatch: pytest.MonkeyPatch):
    from searchpipe.index.store import Index

    monkeypatch.setenv("SEARCHPIPE_HOME", str(sample_home))
    return Index.open("sample")


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CrossEncoder folder built locally: MiniLM's body with a fresh one-logit head."""
    from searchpipe.models.crossencoder import make_untrained_cross_encoder

    out = tmp_path_factory.mktemp("cross-encoder")
    make_untrained_cross_encoder("minilm", str(out))
    return out
