"""Batch jobs from YAML (``searchpipe run CONFIG.yaml``): build, search and score in one go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from searchpipe.api.build import build_index
from searchpipe.api.query import search
from searchpipe.config import JobConfig, load_config
from searchpipe.errors import InputError
from searchpipe.eval.metrics import evaluate


def run_job(
    config: JobConfig | str | Path,
    *,
    progress: bool | None = None,
    allow_import: bool = False,
) -> dict[str, Any]:
    """Run a YAML job (or ``JobConfig``): build the index, then search and evaluate if configured.

    A job without ``index:`` searches an existing index named by ``search.index`` (the file
    ``searchpipe tune`` writes is such a job).

    >>> run_job("configs/demo.yaml")["eval"]["ndcg@10"]  # doctest: +SKIP
    """
    cfg = load_config(config) if isinstance(config, str | Path) else config
    source = str(config) if isinstance(config, str | Path) else "job config"
    if cfg.index is None and cfg.search is None and cfg.pipeline is None:
        raise InputError(f"{source}: a job needs an 'index:', 'search:' or 'pipeline:' section")
    if cfg.search is not None and cfg.pipeline is not None:
        raise InputError(
            f"{source}: a job has a 'search:' or a 'pipeline:' section, not both (a search "
            "is a pipeline: write its stages in pipeline:)"
        )
    if cfg.engine is not None and cfg.index is None and cfg.search is None:
        raise InputError(
            f"{source}: 'engine:' says where an 'index:' section is built and a 'search:' "
            "section runs; add one"
        )
    if cfg.eval is not None and cfg.search is None and cfg.pipeline is None:
        raise InputError(f"{source}: 'eval:' scores the run of a 'search:' section; add one")
    result: dict[str, Any] = {}
    if cfg.index is not None:
        index = build_index(
            cfg.index, index_root=cfg.index_dir, progress=progress, engine=cfg.engine
        )
        result["index"] = {
            "name": index.name,
            "version": index.manifest["version"],
            "docs": index.documents,
            "passages": len(index),
        }
    if cfg.search is not None:
        name = cfg.search.index or (cfg.index.name if cfg.index is not None else None)
        if name is None:
            raise InputError(
                f"{source}: 'search:' names no index; add search.index or an 'index:' section"
            )
        search_cfg = cfg.search.model_copy(update={"index": name})
        result["search"] = search(
            search_cfg, index_root=cfg.index_dir, progress=progress, engine=cfg.engine
        )
        if cfg.eval is not None:
            result["eval"] = evaluate(cfg.search.output, cfg.eval.qrels, tuple(cfg.eval.metrics))
    if cfg.pipeline is not None:
        from searchpipe.api.pipelines import run_pipeline

        base = Path(config).parent if isinstance(config, str | Path) else Path(".")
        ran = run_pipeline(
            cfg.pipeline,
            index_root=cfg.index_dir,
            base=base,
            allow_import=allow_import,
            progress=progress,
        )
        result["pipeline"] = ran
        if cfg.eval is not None:
            if "output" not in ran:
                raise InputError(f"{source}: 'eval:' scores the file a final write stage writes")
            result["eval"] = evaluate(ran["output"], cfg.eval.qrels, tuple(cfg.eval.metrics))
    return result
