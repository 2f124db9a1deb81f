"""Pipelines declared as data: a list of ``{stage name: settings}`` run as a batch job or a stream.

The same list is a YAML job's ``pipeline:`` section, the stages of ``searchpipe pipe`` and of
``searchpipe stage``, and what Python passes here. Stages come from the registry
(``searchpipe.stages.registry``); every stage's columns are checked before anything loads,
and a query encoder is checked against the index it searches, as ``query_stages`` does.

>>> run_pipeline([{"ingest": {"path": "queries.jsonl", "kind": "query"}},
...               {"embed": {}}, {"retrieve": {"index": "sample", "k": 10}},
...               {"write": {"path": "runs/out.arrow"}}])  # doctest: +SKIP
{'stages': ['ingest', 'embed', 'retrieve', 'write'], 'rows': 120, 'output': 'runs/out.arrow'}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from searchpipe import columns as C
from searchpipe.errors import InputError
from searchpipe.pipeline import Pipeline, runs_dir
from searchpipe.stages.base import Source, Stage
from searchpipe.stages.embed import Embed
from searchpipe.stages.registry import Context, build_stages
from searchpipe.stages.write import Write


def open_checked(stages: list[Stage]) -> None:
    """Open every stage; an embedding must come from the model of the index it searches."""
    encoder = None
    for stage in stages:
        stage.open()
        if isinstance(stage, Embed):
            encoder = stage.encoder
        index = getattr(stage, "index", None)
        # a stage that reads embeddings searches the index with them
        if encoder is not None and index is not None and C.EMBEDDING in stage.requires:
            index.check_encoder(encoder.identity())


def prepare(
    specs: list[dict[str, Any]],
    *,
    index_root: str | Path | None = None,
    base: str | Path = ".",
    allow_import: bool = False,
    columns: Iterable[str] = (),
    where: str = "pipeline",
) -> Pipeline:
    """Build and check the stages of ``specs`` (nothing is loaded yet)."""
    ctx = Context(Path(index_root) if index_root else None, Path(base), allow_import)
    pipeline = Pipeline(build_stages(specs, ctx, where))
    pipeline.check(columns)
    return pipeline


def run_pipeline(
    specs: list[dict[str, Any]],
    *,
    index_root: str | Path | None = None,
    base: str | Path = ".",
    allow_import: bool = False,
    work: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run ``specs`` as a batch job: each stage's output kept as Arrow shards in ``work``,
    unchanged stages skipped, a killed run resumed (``Pipeline.run_job``)."""
    pipeline = prepare(specs, index_root=index_root, base=base, allow_import=allow_import)
    stages = pipeline.stages
    if not isinstance(stages[0], Source):
        raise InputError(
            "a pipeline job starts by reading something: ingest, read, or fuse with runs"
        )
    open_checked(stages)
    name = "-".join(s.name for s in stages)[:60]
    folder = Path(work) if work is not None else runs_dir() / f"pipeline-{name}"
    rows = sum(b.num_rows for b in pipeline.run_job(folder, progress=progress))
    out: dict[str, Any] = {"stages": [s.name for s in stages], "rows": rows}
    if isinstance(stages[-1], Write):
        out["output"] = str(stages[-1].path)
    return out


def stream_pipeline(
    specs: list[dict[str, Any]],
    batches: Iterable[pa.RecordBatch] | None = None,
    columns: Iterable[str] = (),
    *,
    index_root: str | Path | None = None,
    allow_import: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Run ``specs`` in memory, streaming record batches from one stage to the next: over
    ``batches`` (whose columns are ``columns``), or from the first stage when it reads a file."""
    pipeline = prepare(specs, index_root=index_root, allow_import=allow_import, columns=columns)
    if batches is None and not isinstance(pipeline.stages[0], Source):
        raise InputError("the stages read nothing: start with ingest or read, or pass input")
    open_checked(pipeline.stages)
    stream: Iterable[pa.RecordBatch] = batches if batches is not None else ()
    for stage in pipeline.stages:
        stream = stage(stream)
    return iter(stream)
