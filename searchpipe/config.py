"""One typed schema for every setting, shared by YAML files, the CLI and the Python API.

YAML is only how a config is saved: ``load_config`` reads a file with the safe loader and
validates it into these pydantic models; an unknown key is an error naming the key and the
file, never a silent default. The CLI builds its options from the same fields
(``searchpipe.cli.common.options_from``) and the Python API takes the same objects or the same
keyword names, so ``configs/*.yaml``, command lines and code read alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from searchpipe.errors import InputError

Precision = Literal["auto", "fp32", "bf16"]
Device = Literal["auto", "cpu", "cuda"]

# Most padded tokens per forward pass, and the row count the fused linears' packed weights
# are laid out for. 8192 against 16384 (benchmarks/token_budget.py, MiniLM, SciFact, 2 cores):
# embedding 1.28x and reranking 1.20x on an AMD EPYC (AVX512-BF16), 1.46x and 1.46x on an
# Intel Xeon (AMX); larger batches likely fall out of the per-core L2. 4096 is as fast in bulk
# on both, but 12% slower on one query's 20 rerank pairs on the Xeon.
TOKEN_BUDGET = 8192


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class IndexConfig(StrictModel):
    """How to build an index (``searchpipe index``)."""

    name: str
    corpus: Path
    model: str = Field("minilm", description="Bi-encoder: 'minilm', a local folder or a Hub name.")
    index_type: str = Field(
        "Flat", description="FAISS factory string (Flat, HNSW32, IVF256,Flat, ...) or 'auto'."
    )
    batch_size: int = Field(256, ge=1, description="Most documents per forward pass.")
    token_budget: int = Field(
        TOKEN_BUDGET, ge=64, description="Most padded tokens per forward pass."
    )
    max_length: int | None = Field(
        None, ge=8, description="Tokens per document (default: the model's)."
    )
    precision: Precision = "auto"
    device: Device = Field(
        "auto", description="Where models run: auto (CUDA when present, else CPU), cpu, cuda."
    )
    backend: Literal["torch", "openvino"] = Field(
        "torch",
        description="Engine of the embedder's forward: torch (our fused path) or openvino "
        "(CPU only; pip install 'searchpipe[openvino]').",
    )
    target_recall: float = Field(
        0.95, gt=0, le=1, description="ANN indexes are tuned to reach this recall@10."
    )
    on_disk: bool = Field(
        False,
        description="For an IVF index: keep its inverted lists in a file beside it, built in "
        "blocks and merged (faiss.contrib.ondisk), memory-mapped at search; for indexes "
        "larger than memory.",
    )
    bm25: bool = Field(True, description="Also build a BM25 index (hybrid search).")
    chunk: bool = Field(
        True,
        description="Split documents longer than the model reads into passages (--no-chunk: "
        "keep them whole; the tail past the model's length is then cut, and reported).",
    )
    chunk_tokens: int | None = Field(
        None,
        ge=32,
        description="Most tokens per passage, title included (default: the model's max length).",
    )
    chunk_overlap: int = Field(
        32, ge=0, description="Tokens a passage shares with the one before it."
    )
    glob: list[str] = Field(
        [],
        description="For a folder of documents: files to include ('*.md'), or exclude with a "
        "leading '!' ('!drafts/*'); repeatable.",
    )
    strict: bool = Field(
        False, description="For a folder of documents: any unreadable file is an error (exit 2)."
    )


class EngineConfig(StrictModel):
    """Where a batch job's embedding and batch search run (``--engine``; a job file's
    ``engine:`` section).

    ``local`` runs in this process. ``ray`` reads and validates the input here (the driver),
    writes it as input shards into ``work_dir`` and runs the shards in a Ray actor pool (one
    model per actor): an index build embeds them and builds the index here from the
    embedding shards, in corpus order; a batch search answers query shards and writes the
    run here, in query order (``searchpipe.engine.ray_jobs``).
    """

    kind: Literal["local", "ray"] = Field(
        default="local", description="local: run in this process; ray: in a Ray actor pool."
    )
    address: str | None = Field(
        default=None,
        description="Ray cluster to join: 'auto' (the one started by `ray start` here), "
        "HOST:PORT or ray://HOST:10001 (default: start Ray on this machine).",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        description="Actors, one model each (default: the cluster's CPUs / cpus-per-worker).",
    )
    cpus_per_worker: int = Field(
        default=1, ge=1, description="CPUs (and torch threads) each actor takes."
    )
    shard_rows: int | None = Field(
        default=None,
        ge=1,
        description="Rows (passages; queries for a search) per shard (default: one shard per "
        "batch the local engine runs, 1,024 documents, so even bf16 vectors and scores equal "
        "the local engine's bit for bit; other sizes agree to ~1e-3 in bf16, ~1e-6 in fp32).",
    )
    work_dir: str | None = Field(
        default=None,
        json_schema_extra={"path_or_uri": True},  # a relative path in a file is rebased
        description="Folder for the shards, seen at the same place by the driver and every "
        "worker: a path (NFS on a cluster) or, for the ray engine, a URI pyarrow opens "
        "(s3://BUCKET/PREFIX, gs://..., hdfs://...; default: $SEARCHPIPE_HOME/runs or ./runs).",
    )
    attempts: int = Field(
        default=3,
        ge=1,
        description="Times the driver runs the shards still missing after a failure.",
    )

    @field_validator("work_dir", mode="before")
    @classmethod
    def _path_to_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _local_work_dir(self) -> EngineConfig:
        # a local job's shards (runs/…/NN-stage/part-*.arrow) are memory-mapped files
        if self.kind == "local" and self.work_dir and "://" in self.work_dir:
            raise ValueError(
                f"work_dir {self.work_dir} is a URI: only --engine ray keeps its shards on "
                "object storage; the local engine needs a local folder"
            )
        return self


class SearchSettings(StrictModel):
    """How one query is answered: first stage, candidate depth, fusion, reranking.

    ``searchpipe.api.query_stages`` turns these into the stages of every search path
    (``Searcher``, ``search``, ``tune``, ``bench``).
    """

    k: int = Field(10, ge=1, description="Hits per query.")
    candidates: int = Field(
        100,
        ge=1,
        description="Rows each first-stage retriever fetches (at least k and the rerank depth); "
        "fusion and rerank work on these, then the output is cut to k.",
    )
    retriever: Literal["auto", "hybrid", "dense", "bm25"] = Field(
        "auto", description="First stage; auto is hybrid when the index has BM25."
    )
    fusion: Literal["rrf", "weighted"] = Field("rrf", description="How hybrid merges its lists.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal-rank fusion constant.")
    dense_weight: float = Field(1.0, ge=0, description="Weight of the dense list in fusion.")
    bm25_weight: float = Field(1.0, ge=0, description="Weight of the BM25 list in fusion.")
    filter: str | None = Field(
        None,
        description="SQL WHERE clause over the documents' metadata (DuckDB), e.g. "
        "\"year >= 2020 AND source = 'pubmed'\"; every hit matches it.",
    )
    model: str | None = Field(None, description="Query encoder (default: the index's own model).")
    rerank: str | None = Field(None, description="CrossEncoder model folder to rerank with.")
    rerank_depth: int | None = Field(
        None,
        ge=1,
        description="Hits per query to rerank (default: the reranker's own choice, made on dev "
        "when we trained it, else 20).",
    )
    rerank_blend: float | None = Field(
        None,
        ge=0,
        description="Weight of the first-stage rank in the reranked order (RRF of both ranks; "
        "0: the reranker alone; default: the reranker's own choice, else 0).",
    )
    rerank_fusion: Literal["rrf", "score"] | None = Field(
        None,
        description="How a blend fuses the two orders: rrf (their ranks) or score (min-max "
        "scaled scores); default: the reranker's own choice, else rrf.",
    )
    rerank_max_length: int | None = Field(
        None, ge=16, description="Tokens per (query, doc) pair (default: the model's)."
    )
    rerank_batch_tokens: int = Field(
        TOKEN_BUDGET, ge=64, description="Most padded tokens per reranker forward pass."
    )
    rerank_backend: Literal["torch", "openvino"] = Field(
        "torch",
        description="Engine of the reranker's forward: torch (our fused path) or openvino "
        "(CPU only; pip install 'searchpipe[openvino]').",
    )
    precision: Precision = "auto"
    device: Device = Field(
        "auto", description="Where models run: auto (CUDA when present, else CPU), cpu, cuda."
    )
    passages: bool = Field(
        False,
        description="Return passages, not documents (by default a document of several "
        "passages is one hit, scored by its best passage).",
    )


class SearchConfig(SearchSettings):
    """A batch search (``searchpipe search``): settings plus the index, queries and run file."""

    index: str | None = None  # in a job config: the job's index
    queries: Path
    output: Path
    k: int = Field(100, ge=1, description="Hits per query.")  # a run file keeps 100 for R@100


class EvalConfig(StrictModel):
    """How to score a run (``searchpipe eval``)."""

    qrels: Path
    metrics: list[str] = ["ndcg@10", "mrr@10", "recall@100", "map"]


class JobConfig(StrictModel):
    """A batch job (``searchpipe run CONFIG.yaml``): build an index, search, evaluate.

    Each section is optional, but a job does something: a ``search:`` without ``index:`` names
    an existing index (``search.index``), which is what ``searchpipe tune`` writes. A
    ``pipeline:`` lists stages of its own (``searchpipe.stages.registry``); ``eval:`` then
    scores the file its last ``write`` stage writes.
    """

    index: IndexConfig | None = None
    #: where the index's embedding and the search run (local by default, or a Ray cluster)
    engine: EngineConfig | None = None
    search: SearchConfig | None = None
    #: stages by name with their settings (``searchpipe.stages.registry``), run after index:
    pipeline: list[dict[str, dict[str, Any] | None]] | None = None
    eval: EvalConfig | None = None
    index_dir: Path | None = None  # default: $SEARCHPIPE_HOME/indexes or ./indexes


M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (safe loader); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(f"config {path} must be a mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(
    path: str | Path,
    model: type[M] = JobConfig,  # type: ignore[assignment]
    *,
    section: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> M:
    """Read a YAML config into ``model``; relative paths in it are taken from the file's folder.

    ``section`` picks one top-level key (``search`` of a job file); ``overrides`` (command-line
    flags) win over the file and are not rebased.

    >>> cfg = load_config("configs/default.yaml")
    >>> cfg.index.model
    'minilm'
    """
    raw = read_config(path, model, section)
    return validate({**raw, **(overrides or {})}, model, source=str(path))


def read_config(
    path: str | Path, model: type[BaseModel], section: str | None = None
) -> dict[str, Any]:
    """The mapping a config file holds for ``model`` (or its ``section``), with the file's
    relative paths rebased onto its folder, not yet validated (callers merge flags into it)."""
    path = Path(path)
    raw = read_yaml(path)
    if section is not None:
        part = raw.get(section)
        if not isinstance(part, dict):
            have = ", ".join(sorted(raw)) or "none"
            raise InputError(f"config {path} has no '{section}:' section (sections: {have})")
        raw = part
    return _rebase(raw, model, path.parent)


def validate(raw: dict[str, Any], model: type[M], source: str) -> M:
    """Validate a mapping into ``model``; errors name the source, the key and what is wrong."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, err["loc"][:-1])
            raise InputError(
                f"{source}: unknown key '{where}'; allowed keys here: {', '.join(allowed)}"
            ) from None
        raise InputError(f"{source}: {where}: {err['msg']} (got {err.get('input')!r})") from None


def _submodel(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    field = model.model_fields.get(key)
    if field is None:
        return None
    ann = field.annotation
    return next(
        (
            a
            for a in getattr(ann, "__args__", (ann,))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ),
        None,
    )


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc:
        sub = _submodel(model, str(part))
        if sub is None:
            break
        model = sub
    return sorted(model.model_fields)


def _is_path(model: type[BaseModel], key: str, value: str) -> bool:
    """Whether ``value`` of ``key`` is a path (a Path field, or a path-or-URI field given a
    path rather than a URI)."""
    field = model.model_fields.get(key)
    if field is None:
        return False
    extra = field.json_schema_extra
    if isinstance(extra, dict) and extra.get("path_or_uri"):
        return "://" not in value
    ann = field.annotation
    return ann is Path or Path in getattr(ann, "__args__", ())


def _rebase(raw: dict[str, Any], model: type[BaseModel], base: Path) -> dict[str, Any]:
    """Make the file's relative path values relative to the file's folder (before validation,
    so values given on the command line are never rebased)."""
    out = dict(raw)
    for key, value in raw.items():
        sub = _submodel(model, key)
        if sub is not None and isinstance(value, dict):
            out[key] = _rebase(value, sub, base)
        elif (
            isinstance(value, str) and _is_path(model, key, value) and not Path(value).is_absolute()
        ):
            out[key] = str(base / value)
    return out


def settings(config: Any, model: type[M], kwargs: dict[str, Any], caller: str) -> M:
    """The ``model`` a Python API call asks for: a config object, or keyword settings.

    >>> settings(None, SearchSettings, {"k": 5}, "Searcher").k
    5
    """
    if config is not None and kwargs:
        raise InputError(f"{caller}: pass either a config object or keyword settings, not both")
    if config is None:
        return validate(kwargs, model, source=f"{caller}()")
    if not isinstance(config, model):
        raise InputError(
            f"{caller}: config must be a {model.__name__}, got {type(config).__name__}"
        )
    return config
