"""searchpipe: semantic search and reranking as composable Arrow pipeline stages.

The public API is imported lazily so that ``searchpipe --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "build_index": "searchpipe.api",
    "open_index": "searchpipe.api",
    "query_stages": "searchpipe.api",
    "search": "searchpipe.api",
    "run_job": "searchpipe.api",
    "Searcher": "searchpipe.api",
    "add_documents": "searchpipe.api",
    "delete_documents": "searchpipe.api",
    "evaluate": "searchpipe.eval.metrics",
    "compare_runs": "searchpipe.eval.compare",
    "Pipeline": "searchpipe.pipeline",
    "run_pipeline": "searchpipe.api.pipelines",
    "stream_pipeline": "searchpipe.api.pipelines",
    "Stage": "searchpipe.stages.base",
    "Source": "searchpipe.stages.base",
    "Ingest": "searchpipe.stages.ingest",
    "Read": "searchpipe.stages.read",
    "Chunk": "searchpipe.stages.chunk",
    "Embed": "searchpipe.stages.embed",
    "BuildIndex": "searchpipe.stages.build",
    "Retrieve": "searchpipe.stages.retrieve",
    "RetrieveBM25": "searchpipe.stages.retrieve",
    "Fuse": "searchpipe.stages.fuse",
    "FuseRuns": "searchpipe.stages.fuse",
    "BestPassage": "searchpipe.stages.aggregate",
    "Lookup": "searchpipe.stages.lookup",
    "Rerank": "searchpipe.stages.rerank",
    "Snippet": "searchpipe.stages.snippet",
    "Cut": "searchpipe.stages.cut",
    "Write": "searchpipe.stages.write",
    "Index": "searchpipe.index",
    "IndexConfig": "searchpipe.config",
    "SearchSettings": "searchpipe.config",
    "SearchConfig": "searchpipe.config",
    "EvalConfig": "searchpipe.config",
    "JobConfig": "searchpipe.config",
    "load_config": "searchpipe.config",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'searchpipe' has no attribute {name!r}")


__all__ = sorted(_API)
