"""searchpipe: semantic search and reranking as composable Arrow pipeline stages.

The public API is imported lazily so that ``searchpipe --help`` stays fast. Scoring runs is
``searchpipe.evaluate.evaluate`` (the module keeps the name ``searchpipe.evaluate``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "build_index": "searchpipe.api",
    "open_index": "searchpipe.api",
    "search": "searchpipe.api",
    "run_job": "searchpipe.api",
    "Searcher": "searchpipe.api",
    "add_documents": "searchpipe.update",
    "delete_documents": "searchpipe.update",
    "compare_runs": "searchpipe.compare",
    "Pipeline": "searchpipe.pipeline",
    "Ingest": "searchpipe.stages.ingest",
    "Embed": "searchpipe.stages.embed",
    "BuildIndex": "searchpipe.stages.build",
    "Retrieve": "searchpipe.stages.retrieve",
    "Rerank": "searchpipe.stages.rerank",
    "Write": "searchpipe.stages.write",
    "Index": "searchpipe.index",
    "IndexConfig": "searchpipe.config",
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
