"""The HTTP API's request and response types (pydantic), and the limits a request must keep.

A search request takes its settings from the one settings schema: each field named in
``SHARED`` is ``SearchSettings``' own field (type, default, bounds, description), with the
server's tighter upper bounds from ``Limits`` laid on top, so the CLI, YAML, the Python API
and HTTP read alike. Two settings differ on purpose:

- ``rerank`` is a switch, not a model path: a client must not make the server load files it
  names, so the server reranks with the model it was started with (``serve --rerank``);
- ``model`` and ``precision`` are the server's to choose and are not in the request.

>>> SearchRequest(query="why do onions make you cry", k=5).k
5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from searchpipe.config import SearchSettings


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; violations are answered with a 4xx JSON error."""

    max_body_bytes: int = 256 * 1024  # search requests
    max_write_bytes: int = 16 * 1024 * 1024  # POST / DELETE .../documents
    max_query_chars: int = 2000
    max_k: int = 100
    max_candidates: int = 1000
    max_rerank_depth: int = 100
    max_filter_chars: int = 1000
    max_batch: int = 64  # queries in one /search/batch request
    max_documents: int = 1000  # documents in one write
    max_ids: int = 10000  # ids in one delete
    max_doc_chars: int = 100_000  # a document's text


LIMITS = Limits()

#: the ``SearchSettings`` fields a search request takes, as they are (``passages`` once the
#: settings schema has it)
SHARED = (
    "k", "candidates", "retriever", "fusion", "rrf_k", "dense_weight", "bm25_weight", "filter",
    "rerank_depth", "rerank_blend", "rerank_fusion", "passages",
)  # fmt: skip
#: tighter bounds than the settings schema's, so one request cannot ask for unbounded work
_BOUNDS: dict[str, Any] = {
    "k": Field(le=LIMITS.max_k),
    "candidates": Field(le=LIMITS.max_candidates),
    "rerank_depth": Field(le=LIMITS.max_rerank_depth),
    "filter": Field(max_length=LIMITS.max_filter_chars),
    "rrf_k": Field(le=1_000_000),
    # JSON parsers accept NaN and Infinity, and a weight near float32's range overflows the
    # fused score: weights are bounded well inside it
    "dense_weight": Field(allow_inf_nan=False, le=1e6),
    "bm25_weight": Field(allow_inf_nan=False, le=1e6),
    "rerank_blend": Field(allow_inf_nan=False, le=1e6),
}


class Strict(BaseModel):
    """Unknown keys are errors, as in the config schema; no type coercion from strings."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _shared_fields() -> dict[str, Any]:
    """(annotation, field) per shared settings field, bounds tightened (``create_model`` form)."""
    fields: dict[str, Any] = {}
    for name in SHARED:
        field = SearchSettings.model_fields.get(name)
        if field is None:
            continue
        annotation: Any = field.annotation
        if name in _BOUNDS:
            annotation = Annotated[annotation, _BOUNDS[name]]
        fields[name] = (annotation, field)
    return fields


# built from the settings schema, so the static type is Any (a subclass of it stays checked
# by pydantic at run time)
_SearchFields: Any = create_model("SearchFields", __base__=Strict, **_shared_fields())

_rerank_field = Field(
    None,
    description="Rerank with the server's cross-encoder (serve --rerank): true or false; "
    "default: on when the server has one.",
)


class SearchRequest(_SearchFields):  # type: ignore[misc]
    """One query and its settings (``POST /v1/indexes/{name}/search``)."""

    query: str = Field(
        min_length=1, max_length=LIMITS.max_query_chars, description="Free text to search for."
    )
    rerank: bool | None = _rerank_field


class BatchSearchRequest(_SearchFields):  # type: ignore[misc]
    """Several queries with one set of settings (``POST /v1/indexes/{name}/search/batch``)."""

    queries: list[Annotated[str, Field(min_length=1, max_length=LIMITS.max_query_chars)]] = Field(
        min_length=1, max_length=LIMITS.max_batch, description="Free-text queries."
    )
    rerank: bool | None = _rerank_field


class Timings(BaseModel):
    """Milliseconds per stage of the pass that answered the query (shared by its micro-batch)."""

    embed: float = 0.0
    dense: float = 0.0
    bm25: float = 0.0
    fuse: float = 0.0
    rerank: float = 0.0


class Hit(BaseModel):
    rank: int
    doc_id: str
    score: float | None = Field(description="First-stage score (the fused one for hybrid search).")
    scores: dict[str, float | int | None] = Field(
        description="Each stage's score: dense, bm25, rerank, and first_stage_rank when reranked."
    )
    title: str
    snippet: str
    highlights: list[tuple[int, int]] = Field(
        description="[start, end) character offsets of query terms in the snippet."
    )
    passage: int | None = Field(
        None, description="Which passage of the document matched (0-based), when it was split."
    )
    start: int | None = Field(None, description="Where that passage starts in the document.")
    end: int | None = Field(None, description="Where it ends.")
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    index: str
    version: int = Field(description="The committed index version that answered.")
    query: str
    took_ms: float = Field(description="From receiving the request to the answer, queue included.")
    batch: int = Field(description="Queries answered in the same pass (micro-batching).")
    timings: Timings
    hits: list[Hit]


class BatchSearchResponse(BaseModel):
    index: str
    took_ms: float
    results: list[SearchResponse]


class Document(BaseModel):
    """A document to add or replace; fields other than these three become its metadata."""

    model_config = ConfigDict(extra="allow")

    doc_id: str = Field(min_length=1, max_length=512)
    title: str = Field("", max_length=LIMITS.max_doc_chars)
    text: str = Field(min_length=1, max_length=LIMITS.max_doc_chars)


class AddRequest(Strict):
    documents: list[Document] = Field(min_length=1, max_length=LIMITS.max_documents)


class DeleteRequest(Strict):
    ids: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        min_length=1, max_length=LIMITS.max_ids
    )


class IndexSummary(BaseModel):
    """What ``searchpipe info`` shows first of an index, for the version being served."""

    name: str
    version: int
    docs: int
    model: str
    dim: int
    factory: str
    metric: str | None = None
    bm25: bool
    created: str
    ann: dict[str, Any] | None = None
    truncation: dict[str, Any] | None = None
    files: dict[str, int] = Field(default_factory=dict, description="File sizes in bytes.")


class IndexList(BaseModel):
    indexes: list[IndexSummary]
    rerank: str | None = Field(description="The server's cross-encoder, if any.")
    auth: bool = Field(description="Whether requests need 'Authorization: Bearer KEY'.")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def summary_of(manifest: dict[str, Any]) -> IndexSummary:
    """An ``IndexSummary`` from a committed manifest."""
    enc = manifest["encoder"]
    return IndexSummary(
        name=manifest["name"],
        version=manifest["version"],
        docs=manifest["doc_count"],
        model=enc["name"],
        dim=enc["dim"],
        factory=manifest["factory"],
        metric=manifest.get("metric"),
        bm25="bm25" in manifest,
        created=manifest["created"],
        ann=manifest.get("ann"),
        truncation=manifest.get("truncation"),
        files={rel: int(meta["size"]) for rel, meta in manifest["files"].items()},
    )


class WriteResponse(BaseModel):
    """What ``searchpipe add`` / ``delete`` report, and the version served afterwards."""

    model_config = ConfigDict(extra="allow")

    index: str
    version: int = Field(description="The index's committed version after the write.")
    committed: bool = Field(description="False when the write changed nothing.")
    served_version: int = Field(description="The version this server answers from now.")
    added: int | None = None
    updated: int | None = None
    unchanged: int | None = None
    deleted: int | None = None
    not_found: int | None = None
    docs: int | None = None
