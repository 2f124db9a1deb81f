"""Small indexes without a model: random unit vectors and a deterministic hash encoder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from searchpipe import columns as C
from searchpipe.arrow import vectors_to_arrow
from searchpipe.models.biencoder import BiEncoder

DIM = 16
ENCODER = {
    "name": "hash-test",
    "weights_sha256": "0" * 64,
    "pooling": "mean",
    "normalize": True,
    "dim": DIM,
    "max_length": 16,
}


class HashEncoder(BiEncoder):
    """Each text's vector is a seeded random unit vector (the same text, the same vector)."""

    def __init__(self) -> None:  # no model to load
        self.precision = "fp32"

    @property
    def ref(self) -> Any:  # Embed reads ref.name
        return type("Ref", (), {"name": ENCODER["name"]})

    def identity(self) -> dict[str, Any]:
        return dict(ENCODER)

    def encode(self, texts: list[str]) -> np.ndarray:
        return text_vectors(texts)


def text_vectors(texts: list[str]) -> np.ndarray:
    out = np.empty((len(texts), DIM), np.float32)
    for i, t in enumerate(texts):
        seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
        out[i] = np.random.default_rng(seed).standard_normal(DIM)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def doc_batch(ids: list[str], texts: list[str], titles: list[str] | None = None) -> pa.RecordBatch:
    """Corpus rows with the hash encoder's embeddings (as ``Embed`` would add them)."""
    titles = titles or [""] * len(ids)
    joined = [f"{t} {x}".strip() for t, x in zip(titles, texts, strict=True)]
    return pa.record_batch(
        {
            C.DOC_ID: ids,
            C.TITLE: titles,
            C.TEXT: texts,
            C.METADATA: pa.nulls(len(ids), pa.string()),
            C.EMBEDDING: vectors_to_arrow(text_vectors(joined)),
        }
    )


def words_text(rng: np.random.Generator, n_words: int = 8) -> str:
    vocab = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    vocab += "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
    words = vocab.split()
    return " ".join(words[i] for i in rng.integers(0, len(words), n_words))


def build_fake(
    root: Path, ids: list[str], texts: list[str], factory: str = "Flat", bm25: bool = True
) -> dict[str, Any]:
    """Commit a new version of ``root`` holding exactly these documents; returns the manifest."""
    from searchpipe.stages.build import BuildIndex

    stage = BuildIndex(root, factory, ENCODER, {"corpus": {"path": "x", "sha256": "y"}}, len(ids))
    if bm25:
        from searchpipe.index.bm25 import BuildBM25

        stage.hooks.append(BuildBM25())
    batches = [doc_batch(ids[s : s + 64], texts[s : s + 64]) for s in range(0, len(ids), 64)]
    for _ in stage(iter(batches)):
        pass
    assert stage.result is not None
    return stage.result


def write_jsonl(path: Path, ids: list[str], texts: list[str]) -> Path:
    import json

    path.write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in zip(ids, texts, strict=True))
    )
    return path
