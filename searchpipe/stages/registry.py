"""The stage registry: every stage by a short name, with one pydantic model of its settings.

The same names and settings serve a YAML job's ``pipeline:`` section, the command line
(``searchpipe stages``, ``searchpipe stage NAME``, ``searchpipe pipe IN -o OUT NAME ... NAME``)
and Python (``build_stages``)::

    pipeline:
      - ingest: {path: queries.jsonl, kind: query}
      - embed: {model: minilm}
      - retrieve: {index: scifact, k: 100}
      - rerank: {model: models/reranker, depth: 20}
      - write: {path: runs/out.arrow}

A stage that names no index (rerank, lookup, snippet, best-passage) uses the index of the
retriever before it. In the place of a name, ``module:Class`` names a stage of your own: a
subclass of ``searchpipe.Stage`` built with the settings as keyword arguments; since that runs
your code, it is allowed only when asked for (``--allow-import``).

>>> sorted(REGISTRY)[:3]
['best-passage', 'chunk', 'cut']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError

from searchpipe import columns as C
from searchpipe.config import TOKEN_BUDGET, Device, Precision, StrictModel
from searchpipe.errors import InputError

if TYPE_CHECKING:  # the stages import pyarrow; the CLI builds its commands from this module
    from searchpipe.stages.base import Stage

# ---------------------------------------------------------------- settings, one model each


class IngestSettings(StrictModel):
    path: Path = Field(description="Corpus or queries file or folder (JSONL, CSV, Parquet, ...).")
    kind: Literal["doc", "query"] = Field("doc", description="doc: a corpus; query: queries.")
    glob: list[str] = Field([], description="For a folder: files to include, or '!' exclude.")
    strict: bool = Field(False, description="For a folder: an unreadable file is an error.")


class ReadSettings(StrictModel):
    path: Path = Field(description="Arrow, Parquet, JSON Lines or TREC run file.")


class ChunkSettings(StrictModel):
    model: str = Field("minilm", description="The embedder whose tokenizer counts tokens.")
    tokens: int | None = Field(None, ge=32, description="Most tokens per passage (the model's).")
    overlap: int = Field(32, ge=0, description="Tokens a passage shares with the one before.")


class EmbedSettings(StrictModel):
    model: str = Field("minilm", description="Bi-encoder: 'minilm', a folder or a Hub name.")
    fields: list[str] = Field([C.TEXT], description="Columns joined into the embedded text.")
    precision: Precision = "auto"
    device: Device = Field("auto", description="auto (CUDA when present), cpu or cuda.")
    max_length: int | None = Field(None, ge=8, description="Tokens per text (the model's).")
    batch_size: int = Field(256, ge=1, description="Most texts per forward pass.")
    token_budget: int = Field(
        TOKEN_BUDGET, ge=64, description="Most padded tokens per forward pass."
    )
    backend: Literal["torch", "openvino"] = Field(
        "torch", description="Engine of the forward: torch, or openvino (CPU only)."
    )


class RetrieveSettings(StrictModel):
    index: str = Field(description="Index name (or folder).")
    k: int = Field(100, ge=1, description="Hits per query.")
    filter: str | None = Field(None, description="SQL WHERE clause over the metadata.")


class FuseSettings(StrictModel):
    index: str | None = Field(None, description="Hybrid retrieval: dense + BM25 on this index.")
    runs: list[Path] = Field([], description="Or: run files to fuse (two or more).")
    k: int = Field(100, ge=1, description="Hits per query (and per retriever).")
    method: Literal["rrf", "weighted"] = "rrf"
    rrf_k: int = Field(60, ge=1, description="Reciprocal-rank fusion constant.")
    weights: list[float] = Field([], description="One weight per list (default: all 1).")
    filter: str | None = Field(None, description="With index: SQL WHERE clause.")


class IndexedSettings(StrictModel):
    index: str | None = Field(None, description="Index (default: the retriever's before it).")


class BestPassageSettings(StrictModel):
    k: int = Field(100, ge=1, description="Documents kept per query.")


class LookupSettings(IndexedSettings):
    queries: Path | None = Field(None, description="Queries file giving each query's text.")


class RerankSettings(IndexedSettings):
    model: str = Field(description="CrossEncoder model folder.")
    queries: Path | None = Field(
        None, description="For runs without query text: the queries file (adds a lookup)."
    )
    depth: int | None = Field(None, ge=1, description="Hits per query to rerank.")
    blend: float | None = Field(None, ge=0, description="Weight of the first-stage rank.")
    fusion: Literal["rrf", "score"] | None = None
    max_length: int | None = Field(None, ge=16, description="Tokens per pair.")
    batch_tokens: int = Field(
        TOKEN_BUDGET, ge=64, description="Most padded tokens per forward pass."
    )
    precision: Precision = "auto"
    device: Device = Field("auto", description="auto (CUDA when present), cpu or cuda.")
    backend: Literal["torch", "openvino"] = Field(
        "torch", description="Engine of the forward: torch, or openvino (CPU only)."
    )


class CutSettings(StrictModel):
    k: int = Field(ge=1, description="Hits kept per query.")


class WriteSettings(StrictModel):
    path: Path = Field(description="Output: .arrow, .parquet, .jsonl or .trec.")


# ---------------------------------------------------------------- the registry


@dataclass
class Context:
    """What the stages of one pipeline share: where indexes live, the folder relative paths
    start from, whether user modules may be imported, and the last index named."""

    index_root: Path | None = None
    base: Path = Path(".")
    allow_import: bool = False
    index: Any = None
    _open: dict[str, Any] = field(default_factory=dict)

    def open_index(self, name: str | None, stage: str) -> Any:
        from searchpipe.index import Index

        if name is None:
            if self.index is None:
                raise InputError(
                    f"stage {stage} needs an index: name one ({stage}: {{index: NAME}}) or put a "
                    "retriever before it"
                )
            return self.index
        if name not in self._open:
            self._open[name] = Index.open(name, self.index_root)
        self.index = self._open[name]
        return self.index

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else self.base / p


Builder = Callable[[Any, Context], "list[Stage]"]


@dataclass(frozen=True)
class StageSpec:
    """A registered stage: its name, settings model, how to build it, and its columns."""

    name: str
    settings: type[StrictModel]
    build: Builder
    help: str
    requires: tuple[str, ...]
    provides: tuple[str, ...]


REGISTRY: dict[str, StageSpec] = {}


def register(
    name: str, settings: type[StrictModel], requires: tuple[str, ...], provides: tuple[str, ...]
) -> Callable[[Builder], Builder]:
    def decorate(build: Builder) -> Builder:
        doc = (build.__doc__ or "").strip().splitlines()
        REGISTRY[name] = StageSpec(name, settings, build, doc[0] if doc else "", requires, provides)
        return build

    return decorate


HITS = (C.QUERY_ID, C.QUERY_TEXT, C.DOC_ID, C.DOC_ROW, C.SCORE, C.RANK)
DOCS = (C.DOC_ID, C.TITLE, C.TEXT, C.METADATA)


@register("ingest", IngestSettings, (), DOCS)
def _ingest(s: IngestSettings, ctx: Context) -> list[Stage]:
    """Read a corpus (doc_id, title, text, metadata) or queries (query_id, text), validated."""
    from searchpipe.stages.ingest import Ingest

    return [Ingest(ctx.path(s.path), kind=s.kind, globs=tuple(s.glob), strict=s.strict)]


@register("read", ReadSettings, (), ("(the file's columns)",))
def _read(s: ReadSettings, ctx: Context) -> list[Stage]:
    """Read any Arrow, Parquet, JSONL or TREC run file as it is."""
    from searchpipe.stages.read import Read

    return [Read(ctx.path(s.path))]


@register("chunk", ChunkSettings, DOCS, (C.PASSAGE, C.START, C.END, C.CONTENT_SHA256))
def _chunk(s: ChunkSettings, ctx: Context) -> list[Stage]:
    """Split documents longer than the model reads into passages."""
    from transformers import AutoTokenizer

    from searchpipe.models.resolve import resolve_model
    from searchpipe.stages.chunk import Chunk

    ref = resolve_model(s.model)
    tokenizer = AutoTokenizer.from_pretrained(str(ref.path))
    tokens = s.tokens or read_max_length(ref.path) or min(int(tokenizer.model_max_length), 512)
    return [Chunk(tokenizer, tokens, s.overlap, f"{ref.name}@{ref.weights_sha256}")]


def read_max_length(folder: Path) -> int | None:
    """The tokens a sentence-transformers model reads (``sentence_bert_config.json``), which
    can be fewer than its tokenizer's limit (MiniLM: 256 of 512), without loading it."""
    import json

    config = folder / "sentence_bert_config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text()).get("max_seq_length")
    return int(value) if value else None


@register("embed", EmbedSettings, (C.TEXT,), (C.EMBEDDING, C.TOKENS))
def _embed(s: EmbedSettings, ctx: Context) -> list[Stage]:
    """Add an embedding column computed by a bi-encoder."""
    from searchpipe.stages.embed import Embed

    fields = tuple(s.fields)
    return [
        Embed(
            s.model,
            fields,
            s.precision,
            s.token_budget,
            s.batch_size,
            s.max_length,
            s.device,
            s.backend,
        )  # fmt: skip
    ]


@register("retrieve", RetrieveSettings, (C.QUERY_ID, C.TEXT, C.EMBEDDING), HITS)
def _retrieve(s: RetrieveSettings, ctx: Context) -> list[Stage]:
    """Dense retrieval: the k nearest passages of each query embedding."""
    from searchpipe.stages.retrieve import Retrieve

    index = ctx.open_index(s.index, "retrieve")
    return [Retrieve(index, s.k, index.filter(s.filter) if s.filter else None)]


@register("retrieve-bm25", RetrieveSettings, (C.QUERY_ID, C.TEXT), HITS)
def _retrieve_bm25(s: RetrieveSettings, ctx: Context) -> list[Stage]:
    """Lexical retrieval: the k best BM25 matches of each query's text."""
    from searchpipe.stages.retrieve import RetrieveBM25

    index = ctx.open_index(s.index, "retrieve-bm25")
    return [RetrieveBM25(index, s.k, index.filter(s.filter) if s.filter else None)]


@register("fuse", FuseSettings, (C.QUERY_ID, C.TEXT, C.EMBEDDING), HITS)
def _fuse(s: FuseSettings, ctx: Context) -> list[Stage]:
    """Hybrid retrieval on an index (dense + BM25), or the fusion of run files."""
    from searchpipe.stages.fuse import Fuse, FuseRuns
    from searchpipe.stages.retrieve import Retrieve, RetrieveBM25

    weights = list(s.weights) or None
    if s.runs:
        if s.index is not None:
            raise InputError("fuse takes an index (hybrid retrieval) or runs, not both")
        return [FuseRuns([ctx.path(p) for p in s.runs], s.method, s.rrf_k, weights, s.k)]
    if s.index is None:
        raise InputError("fuse needs an index (hybrid retrieval) or two or more runs")
    index = ctx.open_index(s.index, "fuse")
    allowed = index.filter(s.filter) if s.filter else None
    retrievers: list[Stage] = [Retrieve(index, s.k, allowed), RetrieveBM25(index, s.k, allowed)]
    return [Fuse(retrievers, ["dense", "bm25"], s.method, s.rrf_k, weights, s.k)]


@register("best-passage", BestPassageSettings, (C.QUERY_ID, C.DOC_ID, C.RANK), ())
def _best_passage(s: BestPassageSettings, ctx: Context) -> list[Stage]:
    """Passage hits to document hits, each document scored by its best passage."""
    from searchpipe.stages.aggregate import BestPassage

    return [BestPassage(s.k)]


@register("lookup", LookupSettings, (C.QUERY_ID, C.DOC_ID), (C.DOC_ROW, C.QUERY_TEXT))
def _lookup(s: LookupSettings, ctx: Context) -> list[Stage]:
    """Add doc store rows (from an index) and query text (from a queries file) to hits."""
    from searchpipe.stages.lookup import Lookup

    index = ctx.open_index(s.index, "lookup")
    return [Lookup(index, ctx.path(s.queries) if s.queries else None)]


@register("rerank", RerankSettings, (C.QUERY_ID, C.QUERY_TEXT, C.DOC_ROW, C.SCORE, C.RANK),
          (C.RERANK_SCORE, C.FIRST_STAGE_RANK))  # fmt: skip
def _rerank(s: RerankSettings, ctx: Context) -> list[Stage]:
    """Re-rank the top hits of each query with a cross-encoder."""
    from searchpipe.stages.lookup import Lookup
    from searchpipe.stages.rerank import Rerank

    index = ctx.open_index(s.index, "rerank")
    rerank = Rerank(
        s.model, index, s.depth, s.precision, s.batch_tokens, s.max_length, s.blend, s.fusion,
        s.device, s.backend,
    )  # fmt: skip
    if s.queries is None:
        return [rerank]
    return [Lookup(index, ctx.path(s.queries)), rerank]


@register("cut", CutSettings, (C.QUERY_ID, C.RANK), ())
def _cut(s: CutSettings, ctx: Context) -> list[Stage]:
    """Keep each query's top k hits."""
    from searchpipe.stages.cut import Cut

    return [Cut(s.k)]


@register("snippet", IndexedSettings, (C.QUERY_TEXT, C.DOC_ROW),
          (C.TITLE, C.TEXT, C.METADATA, C.PASSAGE, C.START, C.END, C.HIGHLIGHTS))  # fmt: skip
def _snippet(s: IndexedSettings, ctx: Context) -> list[Stage]:
    """Add title, metadata, the matched passage and its highlighted query terms to hits."""
    from searchpipe.stages.snippet import Snippet

    return [Snippet(ctx.open_index(s.index, "snippet"))]


@register("write", WriteSettings, (), ())
def _write(s: WriteSettings, ctx: Context) -> list[Stage]:
    """Write the stream to a file (.arrow, .parquet, .jsonl or .trec)."""
    from searchpipe.stages.write import Write

    return [Write(ctx.path(s.path))]


# ---------------------------------------------------------------- building from specs


def providers(column: str) -> list[str]:
    """Names of the registered stages that provide ``column``."""
    return [spec.name for spec in REGISTRY.values() if column in spec.provides]


def settings_of(name: str, raw: dict[str, Any] | None, where: str) -> StrictModel:
    """Validate one stage's settings; errors name the stage, the field and the fix."""
    spec = REGISTRY[name]
    try:
        return spec.settings.model_validate(raw or {})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in e.errors()
        )
        fields = ", ".join(spec.settings.model_fields)
        raise InputError(f"{where}: stage {name}: {problems} (its settings: {fields})") from None


def user_stage(ref: str, raw: dict[str, Any] | None, ctx: Context, where: str) -> Stage:
    """A stage class of the user's own, ``module:Class``, built with ``raw`` as keywords."""
    from searchpipe.stages.base import Stage

    if not ctx.allow_import:
        raise InputError(
            f"{where}: {ref!r} names a stage in your own code, which is imported (and so run) "
            "only with --allow-import; add it if you trust that module"
        )
    module_name, _, class_name = ref.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise InputError(
            f"{where}: cannot load {ref!r} ({e}); is its module on PYTHONPATH?"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise InputError(f"{where}: {ref!r} is not a subclass of searchpipe.Stage")
    try:
        return cls(**(raw or {}))
    except TypeError as e:
        raise InputError(f"{where}: {ref!r} does not take these settings ({e})") from None


def build_stages(
    specs: list[dict[str, Any]], ctx: Context | None = None, where: str = "pipeline"
) -> list[Stage]:
    """Stages from a list of one-key mappings ``{name: settings}``, in order.

    >>> build_stages([{"read": {"path": "run.trec"}}, {"cut": {"k": 10}}])  # doctest: +SKIP
    """
    ctx = ctx or Context()
    stages: list[Stage] = []
    for i, item in enumerate(specs, start=1):
        at = f"{where} stage {i}"
        if not isinstance(item, dict) or len(item) != 1:
            raise InputError(
                f"{at}: write each stage as one 'name: {{settings}}' mapping, got {item!r:.80}"
            )
        ((name, raw),) = item.items()
        if raw is not None and not isinstance(raw, dict):
            raise InputError(f"{at}: settings of {name} must be a mapping, got {raw!r:.60}")
        if ":" in name:
            stages.append(user_stage(name, raw, ctx, at))
        elif name in REGISTRY:
            stages.extend(REGISTRY[name].build(settings_of(name, raw, at), ctx))
        else:
            raise InputError(
                f"{at}: unknown stage {name!r}; the stages are {', '.join(sorted(REGISTRY))} "
                "(or module:Class for one of your own)"
            )
    return stages
