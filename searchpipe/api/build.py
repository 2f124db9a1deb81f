"""Building an index: ingest → chunk → embed as a batch job, then the build stage commits a
version. Documents longer than the embedder reads are split into passages (``stages.chunk``),
sized in the embedder's own tokens. With ``engine=EngineConfig(kind="ray")`` the embedding
runs on a Ray cluster (``searchpipe.engine.ray_jobs``); reading, validating, chunking and the
index build stay here, so the index is the one a local run builds.

>>> from searchpipe import build_index
>>> build_index(corpus="docs.jsonl", name="docs", index_type="HNSW32")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from searchpipe import columns as C
from searchpipe.config import EngineConfig, IndexConfig, settings
from searchpipe.index import Index, index_dir, read_manifest
from searchpipe.index.faiss import check_on_disk, choose_factory, make_faiss_index
from searchpipe.index.store import BuildHook, check_name
from searchpipe.models.precision import compute_summary
from searchpipe.pipeline import Pipeline, runs_dir, with_progress
from searchpipe.stages.build import BuildIndex
from searchpipe.stages.chunk import Chunk
from searchpipe.stages.embed import Embed
from searchpipe.stages.ingest import Ingest

log = logging.getLogger("searchpipe")


def build_index(
    config: IndexConfig | None = None,
    *,
    index_root: str | Path | None = None,
    progress: bool | None = None,
    engine: EngineConfig | None = None,
    **kwargs: Any,
) -> Index:
    """Ingest, embed and index a corpus as a batch job; returns the opened index.

    Settings are those of ``IndexConfig`` (``corpus``, ``name``, ``model``, ``index_type``, ...);
    ``engine`` says where the embedding runs (local by default). A re-run with an unchanged
    corpus and settings reuses every stage's (or shard's) output.

    >>> build_index(corpus="docs.jsonl", name="docs", index_type="HNSW32")  # doctest: +SKIP
    >>> build_index(corpus="docs.jsonl", name="docs", engine=EngineConfig(kind="ray", workers=2))  # doctest: +SKIP
    """
    cfg: IndexConfig = settings(config, IndexConfig, kwargs, "build_index")
    engine = engine or EngineConfig()
    root = index_dir(index_root) / check_name(cfg.name)
    ingest = Ingest(cfg.corpus, globs=tuple(cfg.glob), strict=cfg.strict)
    ingest.check_strict()  # with --strict, an unreadable file fails before any model loads
    embed = Embed(
        cfg.model,
        fields=(C.TITLE, C.TEXT),
        precision=cfg.precision,
        token_budget=cfg.token_budget,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        device=cfg.device,
        backend=cfg.backend,
    )
    Pipeline([ingest, embed]).check()
    embed.open()
    assert embed.encoder is not None
    identity = embed.encoder.identity()
    if cfg.index_type != "auto":  # a bad factory string fails before embedding
        make_faiss_index(cfg.index_type, identity["dim"])
        if cfg.on_disk:
            check_on_disk(cfg.index_type, identity["dim"])
    chunk = chunker(embed.encoder, cfg)
    pipeline = Pipeline([ingest, chunk, embed])
    pipeline.check()
    work_root = engine.work_dir or runs_dir()
    work = Path(work_root) / f"index-{cfg.name}"  # local (a URI is for the ray engine only)
    hooks: list[BuildHook] = []
    stream: Iterator[pa.RecordBatch]
    if engine.kind == "ray":
        from searchpipe.engine.ray_jobs import RayEmbedJob, RecordEngine
        from searchpipe.engine.shards import join, write_inputs

        # read, validated and chunked here, as locally: the same errors, file and line
        passages = Pipeline([ingest, chunk]).stream()
        job = RayEmbedJob(join(work_root, f"index-{cfg.name}", "ray"), engine, embed)
        shards = write_inputs(
            with_progress(passages, None, "shard", progress),
            job.layout,
            engine.shard_rows,
            chunk.fingerprint(ingest.fingerprint(ingest.fingerprint_source())),
        )
        n_rows = sum(s.rows for s in shards)
        stream = job.run(shards)  # runs on Ray only once the build below asks for rows
        hooks.append(RecordEngine(job))
    else:
        stream = pipeline.run_job(work, progress=progress)
        n_rows = pipeline.rows(work, chunk) or 0
    factory = choose_factory(n_rows) if cfg.index_type == "auto" else cfg.index_type
    if cfg.on_disk:
        check_on_disk(factory, identity["dim"])
    build_fp = hashlib.sha256(
        json.dumps(
            [
                embed.fingerprint(
                    chunk.fingerprint(ingest.fingerprint(ingest.fingerprint_source()))
                ),
                factory,
                cfg.target_recall,
                cfg.bm25,
                *(["on_disk"] if cfg.on_disk else []),
            ]
        ).encode()
    ).hexdigest()
    if (root / "manifest.json").exists() and read_manifest(root).get(
        "build_fingerprint"
    ) == build_fp:
        log.info("index %s: corpus, model and settings unchanged; nothing to do", cfg.name)
        return Index.open(root)
    # a folder's unreadable files, listed in the manifest (read again if ingest was reused)
    skipped = ingest.skipped if ingest.skipped is not None else ingest.scan()
    if factory != "Flat":
        from searchpipe.index.ann import TuneSearchParams

        hooks.append(TuneSearchParams(cfg.target_recall, embed.encoder))
    if cfg.bm25:
        from searchpipe.index.bm25 import BuildBM25

        hooks.append(BuildBM25())
    build = BuildIndex(
        root,
        factory,
        identity,
        manifest_fields={
            "corpus": {
                "path": str(ingest.path),
                "sha256": ingest.fingerprint_source(),
                **({"skipped": [{"file": f, "reason": r} for f, r in skipped]} if skipped else {}),
            },
            "build_fingerprint": build_fp,
            "settings": json.loads(cfg.model_dump_json()),
            "chunking": chunk.settings(),
            "engine": {"kind": "local"},  # a Ray build's RecordEngine hook replaces it
            "compute": compute_summary(embed.encoder.device),
        },
        n_rows=n_rows,
        precision=embed.encoder.precision,
        hooks=hooks,
        on_disk=cfg.on_disk,
    )
    for _ in build(with_progress(stream, n_rows, "index", progress)):
        pass
    return Index.open(root)


def chunker(encoder: Any, cfg: IndexConfig) -> Chunk:
    """The chunk stage ``cfg`` asks for, counting in ``encoder``'s tokenizer (a ``BiEncoder``)."""
    identity = encoder.identity()
    tokens = min(cfg.chunk_tokens or identity["max_length"], identity["max_length"])
    return Chunk(
        encoder.tokenizer,
        tokens if cfg.chunk else None,
        cfg.chunk_overlap,
        tokenizer_id=f"{identity['name']}@{identity['weights_sha256']}",
    )


def open_index(name: str, index_root: str | Path | None = None) -> Index:
    """Open a committed index by name (or folder)."""
    return Index.open(name, index_root)
