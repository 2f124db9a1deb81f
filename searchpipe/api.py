"""The Python API: the same names and settings as the YAML configs and the CLI.

>>> from searchpipe import build_index, Searcher
>>> index = build_index(corpus="searchpipe/data/sample/corpus.jsonl", name="sample")  # doctest: +SKIP
>>> Searcher("sample").search("why do onions make you cry", k=3).column("doc_id")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from searchpipe import columns as C
from searchpipe import timing
from searchpipe.config import IndexConfig, JobConfig, SearchConfig, validate
from searchpipe.errors import InputError
from searchpipe.evaluate import evaluate
from searchpipe.index import Index, check_name, index_dir, read_manifest
from searchpipe.pipeline import Pipeline, runs_dir, stage_rows, with_progress
from searchpipe.stages.build import BuildIndex, make_faiss_index
from searchpipe.stages.embed import Embed
from searchpipe.stages.ingest import Ingest
from searchpipe.stages.rerank import Rerank
from searchpipe.stages.retrieve import Retrieve
from searchpipe.stages.write import Write

log = logging.getLogger("searchpipe")


def _config(config: Any, model: type, kwargs: dict[str, Any], caller: str) -> Any:
    if config is not None and kwargs:
        raise InputError(f"{caller}: pass either a config object or keyword settings, not both")
    if config is None:
        return validate(kwargs, model, source=f"{caller}()")
    if not isinstance(config, model):
        raise InputError(
            f"{caller}: config must be a {model.__name__}, got {type(config).__name__}"
        )
    return config


def build_index(
    config: IndexConfig | None = None,
    *,
    index_root: str | Path | None = None,
    progress: bool | None = None,
    **settings: Any,
) -> Index:
    """Ingest, embed and index a corpus as a batch job; returns the opened index.

    Settings are those of ``IndexConfig`` (``corpus``, ``name``, ``model``, ``index_type``, ...).
    A re-run with an unchanged corpus and settings reuses every stage's output.

    >>> build_index(corpus="docs.jsonl", name="docs", index_type="HNSW32")  # doctest: +SKIP
    """
    cfg: IndexConfig = _config(config, IndexConfig, settings, "build_index")
    root = index_dir(index_root) / check_name(cfg.name)
    ingest = Ingest(cfg.corpus)
    embed = Embed(
        cfg.model,
        fields=(C.TITLE, C.TEXT),
        precision=cfg.precision,
        token_budget=cfg.token_budget,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
    )
    pipeline = Pipeline([ingest, embed])
    pipeline.check()
    embed.open()
    assert embed.encoder is not None
    identity = embed.encoder.identity()
    if cfg.index_type != "auto":
        make_faiss_index(
            cfg.index_type, identity["dim"]
        )  # a bad factory string fails before embedding
    work = runs_dir() / f"index-{cfg.name}"
    stream = pipeline.run_job(work, progress=progress)
    n_docs = stage_rows(work / "01-ingest") or 0
    factory = cfg.index_type
    if factory == "auto":
        from searchpipe.ann import choose_factory

        factory = choose_factory(n_docs)
    build_fp = hashlib.sha256(
        json.dumps(
            [
                embed.fingerprint(ingest.fingerprint(ingest.fingerprint_source())),
                factory,
                cfg.target_recall,
                cfg.bm25,
            ]
        ).encode()
    ).hexdigest()
    if (root / "manifest.json").exists() and read_manifest(root).get(
        "build_fingerprint"
    ) == build_fp:
        log.info("index %s: corpus, model and settings unchanged; nothing to do", cfg.name)
        return Index.open(root)
    build = BuildIndex(
        root,
        factory,
        identity,
        manifest_fields={
            "corpus": {"path": str(ingest.path), "sha256": ingest.fingerprint_source()},
            "build_fingerprint": build_fp,
            "settings": json.loads(cfg.model_dump_json()),
        },
        n_docs=n_docs,
        precision=embed.encoder.precision,
    )
    if factory != "Flat":
        from searchpipe.ann import tune_hook

        build.hooks.append(tune_hook(work / "02-embed", cfg.target_recall, embed.encoder))
    if cfg.bm25:
        from searchpipe.stages.bm25 import bm25_hook

        build.hooks.append(bm25_hook)
    for _ in build(with_progress(stream, n_docs, "index", progress)):
        pass
    return Index.open(root)


def retrieval_stage(
    index: Index,
    k: int,
    retriever: str = "auto",
    fusion: str = "rrf",
    rrf_k: int = 60,
    dense_weight: float = 1.0,
    bm25_weight: float = 1.0,
) -> Any:
    """The first-stage retriever a search config asks for: dense, BM25, or both fused."""
    from searchpipe.stages.bm25 import RetrieveBM25
    from searchpipe.stages.fuse import Fuse

    has_bm25 = "bm25" in index.manifest
    if retriever == "auto":
        retriever = "hybrid" if has_bm25 else "dense"
    if retriever == "dense":
        return Retrieve(index, k)
    if retriever == "bm25":
        return RetrieveBM25(index, k)
    return Fuse(
        [Retrieve(index, k), RetrieveBM25(index, k)],
        ["dense", "bm25"],
        method=fusion,
        rrf_k=rrf_k,
        weights=[dense_weight, bm25_weight],
        k=k,
    )


def open_index(name: str, index_root: str | Path | None = None) -> Index:
    """Open a committed index by name (or folder)."""
    return Index.open(name, index_root)


class Searcher:
    """An index with its query encoder (and optional reranker) loaded, for many queries.

    >>> s = Searcher("sample", rerank="models/reranker")  # doctest: +SKIP
    >>> s.search("how do bees communicate", k=5).to_pylist()[0]["doc_id"]  # doctest: +SKIP
    """

    def __init__(
        self,
        index: str | Index,
        *,
        model: str | None = None,
        rerank: str | None = None,
        rerank_depth: int = 20,
        rerank_max_length: int | None = None,
        precision: str = "auto",
        retriever: str = "auto",
        fusion: str = "rrf",
        rrf_k: int = 60,
        index_root: str | Path | None = None,
    ) -> None:
        from searchpipe.models.biencoder import BiEncoder
        from searchpipe.models.crossencoder import CrossEncoderScorer

        self.index = index if isinstance(index, Index) else Index.open(index, index_root)
        built = self.index.manifest["encoder"]
        self.encoder = BiEncoder(
            model or built["name"], precision=precision, max_length=built.get("max_length")
        )
        self.index.check_encoder(self.encoder.identity())
        self.embed = Embed(self.encoder, fields=(C.TEXT,))
        self.reranker = (
            CrossEncoderScorer(rerank, precision=precision, max_length=rerank_max_length)
            if rerank
            else None
        )
        self.rerank_depth = rerank_depth
        self.retrieval: dict[str, Any] = {"retriever": retriever, "fusion": fusion, "rrf_k": rrf_k}
        self._stages: dict[int, list[Any]] = {}

    def stages(self, k: int) -> list[Any]:
        """The query-side stages for ``k`` hits: embed → retrieve → (rerank), built once."""
        if k not in self._stages:
            first = retrieval_stage(self.index, k, **self.retrieval)
            stages: list[Any] = [first] if first.name == "retrieve_bm25" else [self.embed, first]
            if self.reranker is not None:
                stages.append(Rerank(self.reranker, self.index, depth=self.rerank_depth))
            Pipeline(stages).check([C.QUERY_ID, C.TEXT])
            self._stages[k] = stages
        return self._stages[k]

    def search_batch(
        self, queries: pa.Table, k: int = 10, profile: dict[str, float] | None = None
    ) -> pa.Table:
        """Hits for a table of queries (``query_id``, ``text``), one row per (query, hit).

        With ``profile``, adds the seconds spent in each stage (and in the model forward
        passes, FAISS and BM25 inside them) to it.
        """
        batches = queries.to_batches()
        timing.reset()
        for stage in self.stages(k):
            t0 = time.perf_counter()
            batches = list(stage(batches))
            if profile is not None:
                profile[stage.name] = profile.get(stage.name, 0.0) + time.perf_counter() - t0
        if profile is not None:
            for name, seconds in timing.seconds.items():
                profile[name] = profile.get(name, 0.0) + seconds
        return pa.Table.from_batches(batches) if batches else pa.table({})

    def search(self, query: str, k: int = 10, profile: dict[str, float] | None = None) -> pa.Table:
        """Ranked hits for one query, with their title and text."""
        if not query.strip():
            raise InputError("the query is empty; pass some text to search for")
        queries = pa.table({C.QUERY_ID: ["q"], C.TEXT: [query]})
        hits = self.search_batch(queries, k, profile)
        t0 = time.perf_counter()
        docs = self.index.docs.take(hits.column(C.DOC_ROW))
        out = hits.append_column(C.TITLE, docs.column(C.TITLE)).append_column(
            C.TEXT, docs.column(C.TEXT)
        )
        if profile is not None:
            profile["io"] = profile.get("io", 0.0) + time.perf_counter() - t0
        return out


def search(
    config: SearchConfig | None = None,
    *,
    index_root: str | Path | None = None,
    progress: bool | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Search a queries file as a batch job and write the run (Arrow, JSONL or TREC).

    >>> search(index="sample", queries="queries.jsonl", output="run.arrow", k=100)  # doctest: +SKIP
    """
    cfg: SearchConfig = _config(config, SearchConfig, settings, "search")
    if cfg.index is None:
        raise InputError("search: name the index to search (index=...)")
    searcher_index = Index.open(cfg.index, index_root)
    built = searcher_index.manifest["encoder"]
    ingest = Ingest(cfg.queries, kind="query")
    embed = Embed(
        built["name"], fields=(C.TEXT,), precision=cfg.precision, max_length=built.get("max_length")
    )
    first = retrieval_stage(
        searcher_index,
        cfg.k,
        cfg.retriever,
        cfg.fusion,
        cfg.rrf_k,
        cfg.dense_weight,
        cfg.bm25_weight,
    )
    stages: list[Any] = [ingest, embed, first] if first.name != "retrieve_bm25" else [ingest, first]
    rerank = None
    if cfg.rerank:
        rerank = Rerank(
            cfg.rerank,
            searcher_index,
            depth=cfg.rerank_depth,
            precision=cfg.precision,
            token_budget=cfg.rerank_batch_tokens,
            max_length=cfg.rerank_max_length,
        )
        stages.append(rerank)
    write = Write(cfg.output)
    Pipeline([*stages, write]).check()
    if embed in stages:
        embed.open()
        assert embed.encoder is not None
        searcher_index.check_encoder(embed.encoder.identity())
    if rerank is not None:
        rerank.open()
    work = runs_dir() / f"search-{searcher_index.name}-{Path(cfg.output).stem}"
    for _ in write(Pipeline(stages).run_job(work, progress=progress)):
        pass
    summary: dict[str, Any] = {
        "output": str(cfg.output),
        "queries": stage_rows(work / "01-ingest"),
        "rows": write.rows,
    }
    if rerank is not None:
        summary["reranked_pairs"] = rerank.pairs
        summary["truncated_pairs"] = rerank.truncated
        if rerank.truncated:
            log.warning(
                "rerank: %d of %d pairs were longer than the model's %d tokens and were truncated",
                rerank.truncated,
                rerank.pairs,
                rerank.scorer.max_length if rerank.scorer else 0,
            )
    return summary


def run_job(config: JobConfig | str | Path, *, progress: bool | None = None) -> dict[str, Any]:
    """Run a YAML job (or ``JobConfig``): build the index, then search and evaluate if configured."""
    from searchpipe.config import load_config

    cfg = load_config(config) if isinstance(config, str | Path) else config
    index = build_index(cfg.index, index_root=cfg.index_dir, progress=progress)
    result: dict[str, Any] = {
        "index": {"name": index.name, "version": index.manifest["version"], "docs": len(index)}
    }
    if cfg.search is not None:
        search_cfg = (
            cfg.search
            if cfg.search.index
            else cfg.search.model_copy(update={"index": cfg.index.name})
        )
        result["search"] = search(search_cfg, index_root=cfg.index_dir, progress=progress)
        if cfg.eval is not None:
            result["eval"] = evaluate(cfg.search.output, cfg.eval.qrels, tuple(cfg.eval.metrics))
    return result


__all__ = [
    "Searcher",
    "build_index",
    "evaluate",
    "open_index",
    "retrieval_stage",
    "run_job",
    "search",
]
