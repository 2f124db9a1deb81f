"""The query side of the Python API: one query builder, and the two ways to run it.

``query_stages`` turns an index and ``SearchSettings`` into the stages that answer queries::

    (embed) → first stage: dense | BM25 | both fused → (best passage) → (rerank) → cut to k

Every search path is built by it: ``Searcher`` (queries one at a time with the models loaded
once: ``searchpipe query``, ``bench``), ``search`` (a queries file as a batch job:
``searchpipe search`` and ``run``), ``searchpipe tune`` and the benchmarks. The first stage
fetches ``candidates`` rows per retriever (never fewer than ``k`` or the rerank depth), so
fusion and rerank see a deep list and only the output is cut to ``k``. On an index of
chunked documents the first stage searches passages (as many more as there are passages per
document), and each document is then scored by its best passage, which is what the reranker
reads; ``passages=True`` returns the passages themselves.

>>> from searchpipe import Searcher
>>> Searcher("sample", rerank="models/reranker").search("how do bees talk", k=5)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from searchpipe import columns as C
from searchpipe import timing
from searchpipe.config import EngineConfig, SearchConfig, SearchSettings, settings
from searchpipe.engine.ray_jobs import RayShardJob, ShardWorker
from searchpipe.engine.shards import join, write_inputs
from searchpipe.errors import InputError
from searchpipe.index import Index
from searchpipe.pipeline import Pipeline, runs_dir, with_progress
from searchpipe.stages.aggregate import BestPassage
from searchpipe.stages.base import Stage
from searchpipe.stages.cut import Cut
from searchpipe.stages.embed import Embed
from searchpipe.stages.fuse import Fuse
from searchpipe.stages.ingest import Ingest
from searchpipe.stages.rerank import Rerank
from searchpipe.stages.retrieve import Retrieve, RetrieveBM25
from searchpipe.stages.snippet import Snippet
from searchpipe.stages.write import Write

log = logging.getLogger("searchpipe")


def candidate_depth(s: SearchSettings, rerank_depth: int = 0) -> int:
    """Rows each first-stage retriever fetches: ``candidates``, at least ``k`` and the rerank depth."""
    return max(s.candidates, s.k, rerank_depth)


def passage_depth(index: Index, depth: int) -> int:
    """Passages to fetch for ``depth`` documents: ``depth`` times the index's passages per
    document (all of them, at most)."""
    return min(math.ceil(depth * len(index) / max(index.documents, 1)), max(len(index), depth))


def first_stage(index: Index, s: SearchSettings, depth: int) -> Stage:
    """The first-stage retriever the settings ask for: dense, BM25, or both fused; a filter
    restricts each of them to the same allowed rows."""
    retriever = s.retriever
    if retriever == "auto":
        retriever = "hybrid" if "bm25" in index.manifest else "dense"
    allowed = index.filter(s.filter) if s.filter else None
    if retriever == "dense":
        return Retrieve(index, depth, allowed)
    if retriever == "bm25":
        return RetrieveBM25(index, depth, allowed)
    return Fuse(
        [Retrieve(index, depth, allowed), RetrieveBM25(index, depth, allowed)],
        ["dense", "bm25"],
        method=s.fusion,
        rrf_k=s.rrf_k,
        weights=[s.dense_weight, s.bm25_weight],
        k=depth,
    )


def query_stages(
    index: Index, s: SearchSettings, *, encoder: Any = None, reranker: Any = None
) -> list[Stage]:
    """The stages answering queries (``query_id``, ``text``) on ``index`` as ``s`` says.

    ``encoder`` / ``reranker``: already loaded models to use instead of loading the ones the
    settings name (a ``Searcher`` keeps its own). Nothing is loaded here: call
    ``open_stages`` after checking the pipeline.

    >>> [st.name for st in query_stages(index, SearchSettings(rerank="rr"))]  # doctest: +SKIP
    ['embed', 'fuse', 'rerank', 'cut']
    """
    rerank = None
    if reranker is not None or s.rerank:
        rerank = Rerank(
            reranker if reranker is not None else str(s.rerank),
            index,
            depth=s.rerank_depth,
            precision=s.precision,
            token_budget=s.rerank_batch_tokens,
            max_length=s.rerank_max_length,
            blend=s.rerank_blend,
            fusion=s.rerank_fusion,
            device=s.device,
            backend=s.rerank_backend,
        )
    depth = candidate_depth(s, rerank.depth if rerank else 0)
    by_document = index.chunked and not s.passages
    first = first_stage(index, s, passage_depth(index, depth) if by_document else depth)
    stages: list[Stage] = []
    if C.EMBEDDING in first.requires:
        built = index.manifest["encoder"]
        stages.append(
            Embed(
                encoder if encoder is not None else (s.model or built["name"]),
                fields=(C.TEXT,),
                precision=s.precision,
                max_length=built.get("max_length"),
                device=s.device,
            )
        )
    stages.append(first)
    if by_document:
        stages.append(BestPassage(depth))
    if rerank is not None:
        stages.append(rerank)
    stages.append(Cut(s.k))
    return stages


def open_stages(stages: list[Stage], index: Index) -> None:
    """Load the stages' models; refuse a query encoder that is not the index's own."""
    for stage in stages:
        stage.open()
        if isinstance(stage, Embed):
            assert stage.encoder is not None
            index.check_encoder(stage.encoder.identity())


class Searcher:
    """An index with its query encoder (and optional reranker) loaded, for many queries.

    Takes ``SearchSettings`` or the same names as keywords; ``encoder`` / ``reranker`` are
    already loaded models to share between searchers.

    >>> s = Searcher("sample", rerank="models/reranker", rerank_depth=20)  # doctest: +SKIP
    >>> s.search("how do bees communicate", k=5).to_pylist()[0]["doc_id"]  # doctest: +SKIP
    """

    def __init__(
        self,
        index: str | Index,
        config: SearchSettings | None = None,
        *,
        index_root: str | Path | None = None,
        encoder: Any = None,
        reranker: Any = None,
        **kwargs: Any,
    ) -> None:
        self.settings: SearchSettings = settings(config, SearchSettings, kwargs, "Searcher")
        self.index = index if isinstance(index, Index) else Index.open(index, index_root)
        stages = query_stages(self.index, self.settings, encoder=encoder, reranker=reranker)
        Pipeline(stages).check([C.QUERY_ID, C.TEXT])
        open_stages(stages, self.index)
        embed = next((st for st in stages if isinstance(st, Embed)), None)
        rerank = next((st for st in stages if isinstance(st, Rerank)), None)
        self.encoder = embed.encoder if embed is not None else None
        self.reranker = rerank.scorer if rerank is not None else None
        self._stages: dict[int, list[Stage]] = {self.settings.k: stages}
        self.snippet = Snippet(self.index)

    def stages(self, k: int | None = None) -> list[Stage]:
        """The query-side stages for ``k`` hits (default: the settings' k), built once each."""
        k = self.settings.k if k is None else k
        if k not in self._stages:
            self._stages[k] = query_stages(
                self.index,
                self.settings.model_copy(update={"k": k}),
                encoder=self.encoder,
                reranker=self.reranker,
            )
        return self._stages[k]

    def search_batch(
        self, queries: pa.Table, k: int | None = None, profile: dict[str, float] | None = None
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

    def search(
        self, query: str, k: int | None = None, profile: dict[str, float] | None = None
    ) -> pa.Table:
        """Ranked hits for one query, each with its title, metadata and snippet: the passage
        that matched, where it sits in the document and where the query's terms are in it
        (``stages.snippet``)."""
        if not query.strip():
            raise InputError("the query is empty; pass some text to search for")
        queries = pa.table({C.QUERY_ID: ["q"], C.TEXT: [query]})
        hits = self.search_batch(queries, k, profile)
        t0 = time.perf_counter()
        batches = list(self.snippet(hits.to_batches())) if hits.num_columns else []
        out = pa.Table.from_batches(batches) if batches else hits
        if profile is not None:
            profile["io"] = profile.get("io", 0.0) + time.perf_counter() - t0
        return out


def search(
    config: SearchConfig | None = None,
    *,
    index_root: str | Path | None = None,
    progress: bool | None = None,
    engine: EngineConfig | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Search a queries file as a batch job and write the run (Arrow, JSONL or TREC).

    Takes a ``SearchConfig`` or the same names as keywords. ``engine`` says where the
    queries are answered: here (the default) or on a Ray cluster (``search_on_ray``).

    >>> search(index="sample", queries="queries.jsonl", output="run.arrow", k=100)  # doctest: +SKIP
    """
    cfg: SearchConfig = settings(config, SearchConfig, kwargs, "search")
    if cfg.index is None:
        raise InputError("search: name the index to search (index=...)")
    engine = engine or EngineConfig()
    index = Index.open(cfg.index, index_root)
    ingest = Ingest(cfg.queries, kind="query")
    stages = query_stages(index, cfg)
    write = Write(cfg.output)
    Pipeline([ingest, *stages, write]).check()
    work_root = engine.work_dir or runs_dir()
    work_name = f"search-{index.name}-{Path(cfg.output).stem}"
    summary: dict[str, Any] = {"output": str(cfg.output)}
    rerank = next((st for st in stages if isinstance(st, Rerank)), None)
    if engine.kind == "ray":
        job = search_on_ray(index, cfg, ingest, engine, join(work_root, work_name, "ray"), progress)
        for _ in write(job.run(job.shards)):
            pass
        records = job.records()
        summary["queries"] = sum(s.rows for s in job.shards)
        counts = {
            k: sum(r.get(k, 0) for r in records) for k in ("reranked_pairs", "truncated_pairs")
        }
        summary["engine"] = {k: v for k, v in job.summary().items() if k != "shards"}
        summary["engine"]["shards"] = len(job.shards)
    else:
        open_stages(stages, index)
        pipeline = Pipeline([ingest, *stages])
        work = Path(work_root) / work_name  # local (a URI is for the ray engine only)
        for _ in write(pipeline.run_job(work, progress=progress)):
            pass
        summary["queries"] = pipeline.rows(work, ingest)
        if rerank is not None:
            counts = {"reranked_pairs": rerank.pairs, "truncated_pairs": rerank.truncated}
    summary["rows"] = write.rows
    if rerank is not None:
        summary.update(counts)
        if counts["truncated_pairs"]:
            log.warning(
                "rerank: %d of %d pairs were longer than the reranker's max length and were truncated",
                counts["truncated_pairs"],
                counts["reranked_pairs"],
            )
    return summary


class SearchShards(ShardWorker):
    """A Ray actor answering shards of queries: the index (at the same path on every node)
    and its query stages, built by ``query_stages`` from the driver's settings."""

    def __init__(
        self, index: str, settings: dict[str, Any], threads: int, fingerprint: str
    ) -> None:
        super().__init__(threads, fingerprint)
        self.index = Index.open(Path(index))
        self.stages = query_stages(self.index, SearchSettings.model_validate(settings))
        open_stages(self.stages, self.index)
        self.rerank = next((st for st in self.stages if isinstance(st, Rerank)), None)
        self.counted = (0, 0)

    def process(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        stream: Iterable[pa.RecordBatch] = (b.drop_columns([C.SOURCE_ROW]) for b in batches)
        for stage in self.stages:
            stream = stage(stream)
        yield from stream

    def stats(self) -> dict[str, Any]:
        if self.rerank is None:
            return {}
        now = (self.rerank.pairs, self.rerank.truncated)
        pairs, truncated = now[0] - self.counted[0], now[1] - self.counted[1]
        self.counted = now
        return {"reranked_pairs": pairs, "truncated_pairs": truncated}


def search_on_ray(
    index: Index,
    cfg: SearchConfig,
    ingest: Ingest,
    engine: EngineConfig,
    work: str | Path,
    progress: bool | None = None,
) -> RayShardJob:
    """Read and validate the queries here (the same errors as a local search), write them as
    input shards into ``work`` and return the Ray job that answers them (``job.run``).

    Hits of a shard are reused only when made with these settings, this version of the index
    and these models (their files' sizes and times), from these queries' bytes."""
    s = SearchSettings.model_validate(cfg.model_dump(include=set(SearchSettings.model_fields)))
    for field in ("model", "rerank"):  # a local folder: the same path on every node
        value = getattr(s, field)
        if value and Path(value).exists():
            s = s.model_copy(update={field: str(Path(value).resolve())})
    settings_json = s.model_dump(mode="json")
    fingerprint = hashlib.sha256(
        json.dumps(
            [
                settings_json,
                str(index.root.resolve()),
                index.manifest.get("version"),
                index.manifest.get("build_fingerprint"),
                [_model_stamp(v) for v in (s.model, s.rerank) if v],
            ]
        ).encode()
    ).hexdigest()
    kwargs = {"index": str(index.root.resolve()), "settings": settings_json}
    verbs = ("search", "searched")
    job = RayShardJob(work, engine, SearchShards, kwargs, fingerprint, "search", verbs)
    job.shards = write_inputs(
        with_progress(Pipeline([ingest]).stream(), None, "shard", progress),
        job.layout,
        engine.shard_rows,
        fingerprint,
    )
    return job


def _model_stamp(model: str) -> list[Any]:
    """A model folder's files with their sizes and modification times (a model name: itself),
    so a reranker retrained into the same folder is never mistaken for the old one."""
    path = Path(model)
    if not path.is_dir():
        return [model]
    return sorted(
        [str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns]
        for f in path.rglob("*")
        if f.is_file()
    )
