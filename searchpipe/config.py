"""One typed schema for every setting, shared by YAML files, the CLI and the Python API.

YAML is only how a config is saved: ``load_config`` reads a file with the safe loader and
validates it into these pydantic models; an unknown key is an error naming the key and the
file, never a silent default. The Python API takes the same objects (or the same keyword
names), so ``configs/*.yaml`` and code read alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from searchpipe.errors import InputError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class IndexConfig(StrictModel):
    """How to build an index (``searchpipe index``)."""

    name: str
    corpus: Path
    model: str = "minilm"
    index_type: str = "Flat"  # a FAISS factory string, or "auto"
    batch_size: int = Field(default=256, ge=1)  # most docs per forward pass; see token_budget

    token_budget: int = Field(default=16384, ge=64)  # padded tokens per forward pass
    max_length: int | None = Field(default=None, ge=8)  # truncate docs (default: model's)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    target_recall: float = Field(default=0.95, gt=0, le=1)  # ANN indexes are tuned to reach it
    bm25: bool = True  # also build a BM25 index (bm25s), for hybrid and lexical search


class SearchConfig(StrictModel):
    """How to search an index with a set of queries (``searchpipe search``)."""

    index: str | None = None  # in a job config: the job's index
    queries: Path
    output: Path
    k: int = Field(default=100, ge=1)
    retriever: Literal["auto", "hybrid", "dense", "bm25"] = (
        "auto"  # auto: hybrid if the index has BM25
    )
    fusion: Literal["rrf", "weighted"] = "rrf"
    rrf_k: int = Field(default=60, ge=1)
    dense_weight: float = Field(default=1.0, ge=0)
    bm25_weight: float = Field(default=1.0, ge=0)
    rerank: str | None = None
    rerank_depth: int = Field(default=20, ge=1)
    rerank_max_length: int | None = Field(default=None, ge=16)  # tokens per pair (default: model's)
    rerank_batch_tokens: int = Field(default=16384, ge=64)
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class EvalConfig(StrictModel):
    """How to score a run (``searchpipe eval``)."""

    qrels: Path
    metrics: list[str] = ["ndcg@10", "mrr@10", "recall@100", "map"]


class JobConfig(StrictModel):
    """A batch job (``searchpipe run CONFIG.yaml``): build, then optionally search and eval."""

    index: IndexConfig
    search: SearchConfig | None = None
    eval: EvalConfig | None = None
    index_dir: Path | None = None  # default: $SEARCHPIPE_HOME/indexes or ./indexes


M = TypeVar("M", bound=BaseModel)


def load_config(path: str | Path, model: type[M] = JobConfig) -> M:  # type: ignore[assignment]
    """Read a YAML config into ``model``; relative paths in it are taken from the file's folder.

    >>> cfg = load_config("configs/default.yaml")
    >>> cfg.index.model
    'minilm'
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise InputError(f"config {path} must be a mapping of sections, got {type(raw).__name__}")
    return validate(raw, model, source=str(path), base=path.parent)


def validate(raw: dict[str, Any], model: type[M], source: str, base: Path | None = None) -> M:
    """Validate a mapping into ``model``; errors name the source, the key and what is wrong."""
    try:
        cfg = model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, err["loc"][:-1])
            raise InputError(
                f"{source}: unknown key '{where}'; allowed keys here: {', '.join(allowed)}"
            ) from None
        raise InputError(f"{source}: {where}: {err['msg']} (got {err.get('input')!r})") from None
    return _rebase(cfg, base) if base is not None else cfg


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            break
        ann = field.annotation
        sub = next(
            (
                a
                for a in getattr(ann, "__args__", (ann,))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if sub is None:
            break
        model = sub
    return sorted(model.model_fields)


def _rebase(cfg: M, base: Path) -> M:
    """Make relative Path fields relative to the config file's folder."""
    updates: dict[str, Any] = {}
    for name, value in cfg:
        if isinstance(value, BaseModel):
            updates[name] = _rebase(value, base)
        elif isinstance(value, Path) and not value.is_absolute():
            updates[name] = base / value
    return cfg.model_copy(update=updates) if updates else cfg
