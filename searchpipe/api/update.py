"""Incremental updates: add, replace and delete documents of a committed index.

An update is a read-modify-write under the index's one writer lock: it reads the committed
version, and writes a whole new version beside it through the same ``BuildIndex`` sink a full
build uses (doc store, stored vectors, FAISS, BM25 when the index has it), then commits it
with one manifest swap. Updates work by document: a document's passages come and go
together, and unchanged documents are not chunked or embedded again: their passages and
vectors come from the old version's ``vectors.arrow``, matched by doc id and the whole
document's content sha256. So

- adding a document whose id is new appends it;
- adding one whose id exists with the same title, text and metadata changes nothing;
- adding one whose id exists with other content replaces it and all its passages (an upsert),
  chunked as the index was built (``manifest["chunking"]``);
- deleting removes it from the doc store, FAISS and BM25 alike, since all three are rebuilt
  from the same surviving rows.

An update that changes nothing commits nothing. Old versions beyond ``keep`` are removed.

>>> add_documents("docs", "more.jsonl")  # doctest: +SKIP
{'index': 'docs', 'version': 2, 'added': 10, 'updated': 1, 'unchanged': 289, ...}
>>> delete_documents("docs", ["d1", "d7"])  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from searchpipe import columns as C
from searchpipe.errors import InputError
from searchpipe.index.layout import (
    CONTENT_SHA256,
    DOC_STORE_SCHEMA,
    content_sha256,
)
from searchpipe.index.store import (
    KEEP_VERSIONS,
    BuildHook,
    Index,
    IndexWriter,
    check_name,
    index_dir,
)
from searchpipe.stages.build import BuildIndex

#: manifest fields that a new version gets afresh (from the writer or the build)
_REBUILT = {
    "format_version", "name", "version", "version_dir", "created", "files", "kept_versions",
    "manifest_sha256", "encoder", "metric", "normalized", "factory", "doc_count",
    "search_params", "bm25", "build_fingerprint", "passage_count",
}  # fmt: skip
HISTORY = 50  # updates remembered in the manifest
#: what an update carries of each kept row from ``vectors.arrow``
_STORED = (CONTENT_SHA256, C.EMBEDDING)
_ROW_NAMES = [*DOC_STORE_SCHEMA.names, *_STORED]


def add_documents(
    name: str,
    corpus: str | Path,
    index_root: str | Path | None = None,
    *,
    encoder: Any = None,
    keep: int = KEEP_VERSIONS,
) -> dict[str, Any]:
    """Add the documents of ``corpus`` to index ``name``, embedding only new or changed ones.

    ``encoder`` may be a loaded ``BiEncoder`` (it must be the index's own model); by default
    the model named in the manifest is loaded, and only when something is to be embedded.
    Returns counts: ``added``, ``updated``, ``unchanged`` and the committed ``version``.

    >>> add_documents("docs", "more.jsonl")["added"]  # doctest: +SKIP
    10
    """
    from searchpipe.stages.ingest import Ingest

    ingest = Ingest(corpus)  # a missing or unreadable corpus fails before the lock is taken
    root = index_dir(index_root) / check_name(name)
    with IndexWriter(root, keep=keep) as writer:
        old = _open_base(root, writer)
        known = _known_docs(old)
        # pass 1: decide, keeping only ids; the corpus is read again to embed (pass 2)
        fresh: set[str] = set()
        replaced: set[str] = set()
        unchanged = 0
        for batch in ingest.read():
            for doc_id, digest in zip(
                batch.column(C.DOC_ID).to_pylist(), content_sha256(batch).to_pylist(), strict=True
            ):
                had = known.get(doc_id)
                if had is None:
                    fresh.add(doc_id)
                elif had[1] == digest:
                    unchanged += 1
                else:
                    replaced.add(doc_id)
        summary = {
            "index": old.name,
            "added": len(fresh),
            "updated": len(replaced),
            "unchanged": unchanged,
        }
        if not fresh and not replaced:
            return {**summary, "version": old.manifest["version"], "committed": False}
        chunk, embed = _embedder(old, encoder)
        changed = fresh | replaced
        new_rows = embed(chunk(_only(ingest.read(), changed)))
        kept = _kept_rows(old, drop={r for i in replaced for r in known[i][0]})
        event = {"op": "add", "corpus": str(ingest.path), "sha256": ingest.fingerprint_source()}
        manifest = _commit(
            old, writer, _chain(kept, new_rows), len(old) + len(fresh), event, summary
        )
    return {
        **summary,
        "version": manifest["version"],
        "docs": manifest["doc_count"],
        "committed": True,
    }


def delete_documents(
    name: str,
    ids: Iterable[str],
    index_root: str | Path | None = None,
    *,
    keep: int = KEEP_VERSIONS,
) -> dict[str, Any]:
    """Delete documents by id from index ``name`` (doc store, FAISS and BM25 together).

    Ids that are not in the index are counted in ``not_found``; deleting none commits
    nothing. Deleting every document is refused (remove the index folder instead).

    >>> delete_documents("docs", ["d1", "d7"])["deleted"]  # doctest: +SKIP
    2
    """
    wanted = {str(i) for i in ids}
    if not wanted:
        raise InputError("no document ids to delete; pass --ids ID ... or --ids-file FILE")
    root = index_dir(index_root) / check_name(name)
    with IndexWriter(root, keep=keep) as writer:
        old = _open_base(root, writer)
        known = _known_docs(old)
        found = [i for i in wanted if i in known]
        rows = {r for i in found for r in known[i][0]}
        summary = {"index": old.name, "deleted": len(found), "not_found": len(wanted) - len(found)}
        if not rows:
            return {**summary, "version": old.manifest["version"], "committed": False}
        if len(rows) == len(old):
            raise InputError(
                f"deleting {len(found)} documents would leave index {old.name} empty; "
                f"remove the folder {root} instead"
            )
        event = {"op": "delete", "ids": len(found)}
        manifest = _commit(
            old, writer, _kept_rows(old, drop=rows), len(old) - len(rows), event, summary
        )
    return {
        **summary,
        "version": manifest["version"],
        "docs": manifest["doc_count"],
        "committed": True,
    }


def read_ids_file(path: str | Path) -> list[str]:
    """Doc ids from a file, one per line (blank lines and ``#`` comments skipped)."""
    p = Path(path)
    try:
        lines = p.read_bytes().decode("utf-8").splitlines()
    except OSError as e:
        raise InputError(f"ids file {p} cannot be read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"ids file {p}: bytes are not UTF-8 at offset {e.start}") from None
    return [s for line in lines if (s := line.strip()) and not s.startswith("#")]


def _open_base(root: Path, writer: IndexWriter) -> Index:
    """The committed version an update starts from (read under the writer's lock)."""
    if writer.version == 1:
        raise InputError(
            f"no index at {root}; build one first with: searchpipe index CORPUS --name {root.name}"
        )
    old = Index.open(root)
    assert old.manifest["version"] + 1 == writer.version, "the lock keeps other writers out"
    return old


def _known_docs(index: Index) -> dict[str, tuple[list[int], str]]:
    """doc id → (its passages' rows, the document's content sha256) in ``index``."""
    ids = index.docs.column(C.DOC_ID).to_pylist()
    digests = _stored(index).column(CONTENT_SHA256).to_pylist()
    known: dict[str, tuple[list[int], str]] = {}
    for row, (doc_id, digest) in enumerate(zip(ids, digests, strict=True)):
        known.setdefault(doc_id, ([], digest))[0].append(row)
    return known


def _stored(index: Index) -> pa.Table:
    """The index's ``vectors.arrow`` (content sha256 and embedding per row), memory-mapped
    when the index was opened."""
    if index.vectors is None:
        raise InputError(
            f"index {index.name} was built by an older searchpipe without stored vectors, so it "
            "cannot be updated in place; rebuild it once with: searchpipe index CORPUS --name "
            f"{index.name}"
        )
    return index.vectors


def _kept_rows(index: Index, drop: set[int]) -> Iterator[pa.RecordBatch]:
    """The old version's rows minus ``drop``, with their stored digests and embeddings, batch
    by batch."""
    stored = _stored(index)
    docs = index.docs.select(DOC_STORE_SCHEMA.names)
    step = 4096
    for start in range(0, len(docs), step):
        stop = min(start + step, len(docs))
        rows = [r for r in range(start, stop) if r not in drop]
        if not rows:
            continue
        take = pa.array(rows, pa.int64())
        part = docs.take(take)
        yield pa.record_batch(
            [
                *(part.column(n).combine_chunks() for n in DOC_STORE_SCHEMA.names),
                *(stored.column(n).take(take).combine_chunks() for n in _STORED),
            ],
            names=_ROW_NAMES,
        )


def _only(batches: Iterable[pa.RecordBatch], ids: set[str]) -> Iterator[pa.RecordBatch]:
    wanted = pa.array(sorted(ids), pa.string())
    for batch in batches:
        picked = batch.filter(pc.is_in(batch.column(C.DOC_ID), value_set=wanted))
        if picked.num_rows:
            yield picked


def _embedder(index: Index, encoder: Any) -> tuple[Any, Any]:
    """The chunk and embed stages that turn corpus batches into rows of ``index``: its own
    model (identity checked), chunked as the index was built."""
    from searchpipe.stages.chunk import Chunk
    from searchpipe.stages.embed import Embed

    if encoder is None:
        from searchpipe.models.biencoder import BiEncoder

        built = index.manifest["encoder"]
        encoder = BiEncoder(
            built["name"],
            precision=built.get("precision", "auto"),
            max_length=built.get("max_length"),
        )
    index.check_encoder(encoder.identity())
    chunking = index.manifest.get("chunking") or {"tokens": None}  # formats 1-2: whole
    tokens = chunking["tokens"]
    chunk = Chunk(encoder.tokenizer if tokens else None, tokens, chunking.get("overlap", 0))
    return chunk, Embed(encoder, fields=(C.TITLE, C.TEXT))


def _chain(*streams: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Batches of several streams, cast to one schema (doc store columns, digest, embedding)."""
    for stream in streams:
        for batch in stream:
            yield pa.record_batch([batch.column(n) for n in _ROW_NAMES], names=_ROW_NAMES)


def _commit(
    old: Index,
    writer: IndexWriter,
    rows: Iterable[pa.RecordBatch],
    n_rows: int,
    event: dict[str, Any],
    summary: dict[str, Any],
) -> dict[str, Any]:
    """Write ``rows`` as the next version through ``BuildIndex`` and commit it."""
    m = old.manifest
    encoder = {k: v for k, v in m["encoder"].items() if k != "precision"}
    history = [
        *m.get("updates", []),
        {**event, **summary, "at": _now(), "from_version": m["version"]},
    ]
    fields = {k: v for k, v in m.items() if k not in _REBUILT}
    fields["updates"] = history[-HISTORY:]
    hooks: list[BuildHook] = [KeepSearchParams(m.get("search_params") or {})]
    if "bm25" in m:
        from searchpipe.index.bm25 import BuildBM25

        hooks.append(BuildBM25())
    build = BuildIndex(
        writer.root,
        m["factory"],
        encoder,
        fields,
        n_rows=n_rows,
        precision=m["encoder"].get("precision", "fp32"),
        writer=writer,
        hooks=hooks,
        on_disk=bool(m.get("on_disk")),
    )
    for _ in build(rows):
        pass
    assert build.result is not None
    return build.result


class KeepSearchParams:
    """A build hook: carry the efSearch/nprobe tuned at build time into the new version."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def __call__(self, writer: IndexWriter, faiss_index: Any) -> dict[str, Any]:
        return {"search_params": self.params}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


__all__ = ["add_documents", "delete_documents", "read_ids_file"]
