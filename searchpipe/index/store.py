"""The index folder: FAISS vectors, an Arrow doc store and a manifest that describes them.

Layout of ``indexes/NAME/``::

    manifest.json          the committed version: model, metric, factory, counts, checksums
    v000001/index.faiss    FAISS index; row i is doc store row i
    v000001/docs.arrow     doc store (doc_id, title, text, metadata), Arrow IPC, memory-mapped
    v000001/vectors.arrow  per row: content sha256 and the embedding (for add/delete without
                           re-embedding, see ``searchpipe.api.update``)
    v000001/bm25/          BM25 index, when built
    .lock                  held by the one writer

Every write makes a new version folder beside the current one, fsyncs it, and then swaps
``manifest.json`` with ``os.replace`` and fsyncs the folder, so a crash leaves either the old
or the new version, never a mix. Readers read the manifest once and open the files it
names. The manifest records a sha256 and size for every file: opening checks sizes,
``verify`` checks every byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from searchpipe import columns as C
from searchpipe.arrow import RowTaker, joined_text
from searchpipe.errors import InputError, RunError
from searchpipe.files import file_digest, fsync_dir, fsync_file

if TYPE_CHECKING:
    from searchpipe.index.filters import RowFilter
from searchpipe.index.faiss import read_faiss
from searchpipe.index.layout import (
    BM25_DIR,
    CONTENT_SHA256,
    DOC_STORE_SCHEMA,
    DOCS_FILE,
    FAISS_FILE,
    IVFDATA_FILE,
    MANIFEST,
    VECTORS_FILE,
    VERSION_DIR,
    content_sha256,
    vectors_schema,
    whole_passages,
)

FORMAT_VERSION = 3
#: 1: no vectors.arrow and no manifest checksum (read-only use); 1-2: no passages (each row a
#: whole document, read as one passage)
READABLE_FORMATS = (1, 2, 3)
KEEP_VERSIONS = 2
NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
__all__ = [
    "CONTENT_SHA256", "DOC_STORE_SCHEMA", "DOCS_FILE", "FAISS_FILE", "MANIFEST", "VECTORS_FILE",
    "BuildHook", "Index", "IndexWriter", "check_index", "content_sha256", "index_dir",
    "read_manifest", "rows_to_doc_ids", "vectors_schema", "verify",
]  # fmt: skip


def index_dir(override: str | Path | None = None) -> Path:
    """Where indexes live: ``override``, else ``$SEARCHPIPE_HOME/indexes``, else ``./indexes``."""
    if override is not None:
        return Path(override)
    home = os.environ.get("SEARCHPIPE_HOME")
    return Path(home) / "indexes" if home else Path("indexes")


def check_name(name: str) -> str:
    if not name or name.startswith(".") or not set(name) <= NAME_OK:
        raise InputError(
            f"index name {name!r} is not allowed; use letters, digits, '-', '_' and '.' "
            "(not starting with '.')"
        )
    return name


def _version_dir(version: int) -> str:
    return f"v{version:06d}"


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of a manifest's fields other than ``manifest_sha256`` (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The exact bytes a manifest is saved as (``check`` compares the file against them)."""
    return (json.dumps(manifest, indent=2) + "\n").encode()


def _corrupt(path: Path, why: str) -> RunError:
    return RunError(f"{path} is corrupt ({why}); rebuild the index or restore it from a backup")


def read_manifest(root: Path) -> dict[str, Any]:
    """The committed manifest of the index at ``root``, checked (self-checksum, paths, format)."""
    path = root / MANIFEST
    if not path.is_file():
        if not root.exists():
            raise InputError(
                f"no index at {root}; build one with: searchpipe index CORPUS --name {root.name}"
            )
        raise InputError(
            f"{root} has no {MANIFEST}: it is not a searchpipe index (or was never committed)"
        )
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError
        raise _corrupt(path, str(e).splitlines()[0][:160]) from None
    if not isinstance(manifest, dict):
        raise _corrupt(path, f"a JSON {type(manifest).__name__}, not an object")
    recorded = manifest.get("manifest_sha256")
    if recorded is not None and recorded != manifest_digest(manifest):
        raise _corrupt(path, "its contents do not match its recorded manifest_sha256")
    version = manifest.get("format_version")
    if version not in READABLE_FORMATS:
        raise InputError(
            f"{path} has format version {version!r}; this searchpipe reads versions "
            f"{', '.join(map(str, READABLE_FORMATS))}: rebuild the index"
        )
    if recorded is None and version >= 2:
        raise _corrupt(path, "manifest_sha256 is missing")
    _check_paths(path, manifest)
    return manifest


def _check_paths(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse manifest paths that could reach outside the version folder."""
    vdir = manifest.get("version_dir")
    files = manifest.get("files")
    if not isinstance(vdir, str) or not VERSION_DIR.fullmatch(vdir):
        raise _corrupt(path, f"version_dir {vdir!r} is not of the form v000001")
    if not isinstance(files, dict) or not all(isinstance(m, dict) for m in files.values()):
        raise _corrupt(path, "'files' is not a mapping of file names to size and sha256")
    for rel in files:
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or any(p in ("..", ".") for p in parts):
            raise _corrupt(path, f"file path {rel!r} is not a plain path inside {vdir}")
    kept = manifest.get("kept_versions", [])
    if not isinstance(kept, list) or not all(
        isinstance(k, str) and VERSION_DIR.fullmatch(k) for k in kept
    ):
        raise _corrupt(path, f"kept_versions {kept!r} is not a list of version folders")


@dataclass
class Index:
    """An opened, committed index version (read-only).

    >>> idx = Index.open("sample")  # doctest: +SKIP
    >>> scores, rows = idx.search(query_vectors, k=10)  # doctest: +SKIP
    """

    root: Path
    manifest: dict[str, Any]
    faiss_index: Any
    docs: pa.Table
    #: the version's BM25 index (``searchpipe.index.bm25.BM25Index``), opened with the rest
    #: so that a reader holds all of one version even after a writer removes its folder
    bm25: Any = None
    #: the version's stored embeddings (``vectors.arrow``, memory-mapped), for exact search
    #: over a filter's few allowed rows
    vectors: pa.Table | None = None
    _metadata: pa.Table | None = field(default=None, repr=False)
    _taker: RowTaker | None = field(default=None, repr=False)

    @classmethod
    def open(cls, name: str | Path, index_root: str | Path | None = None) -> Index:
        """Open the committed version of index ``name`` (or of the index folder ``name``).

        The manifest is read once and only the files it names are opened. If a writer
        commits twice and removes this version while it is being opened, the newer
        manifest is read and opening starts over, so a reader never blocks nor fails for it.
        """
        root = _root(name, index_root)
        for attempt in range(3):
            manifest = read_manifest(root)
            try:
                return cls._open_version(root, manifest)
            except RunError:
                if attempt == 2 or read_manifest(root)["version"] == manifest["version"]:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _open_version(cls, root: Path, manifest: dict[str, Any]) -> Index:
        vdir = root / manifest["version_dir"]
        for rel, meta in manifest["files"].items():
            f = vdir / rel
            if not f.is_file() or f.stat().st_size != meta["size"]:
                found = f.stat().st_size if f.is_file() else "missing"
                raise RunError(
                    f"index {root.name} is corrupt: {f} should be {meta['size']} bytes, found {found}; "
                    f"run 'searchpipe check {root.name}' and rebuild the index"
                )
        import pyarrow.ipc as ipc

        try:
            faiss_index = read_faiss(vdir / FAISS_FILE, vdir / IVFDATA_FILE)
            docs = ipc.open_file(pa.memory_map(str(vdir / DOCS_FILE))).read_all()
            if C.PASSAGE not in docs.schema.names:  # format 1-2: one row per whole document
                docs = whole_passages(docs).select(DOC_STORE_SCHEMA.names)
            vectors = None
            if (vdir / VECTORS_FILE).is_file():
                vectors = ipc.open_file(pa.memory_map(str(vdir / VECTORS_FILE))).read_all()
            bm25 = None
            if "bm25" in manifest:
                from searchpipe.index.bm25 import BM25Index

                try:
                    bm25 = BM25Index(vdir / BM25_DIR)
                except Exception as e:  # bm25s parses its files several ways (JSON, ast, npy)
                    raise RuntimeError(f"{BM25_DIR}: {type(e).__name__}: {e}") from None
        except (RuntimeError, OSError, ValueError, pa.ArrowException) as e:
            raise RunError(
                f"index {root.name} could not be read ({str(e).splitlines()[0][:200]}); "
                f"run 'searchpipe check {root.name}' and rebuild it"
            ) from None
        cls._apply_search_params(faiss_index, manifest.get("search_params") or {})
        return cls(root, manifest, faiss_index, docs, bm25, vectors)

    @staticmethod
    def _apply_search_params(faiss_index: Any, params: dict[str, Any]) -> None:
        if params:
            import faiss

            ps = faiss.ParameterSpace()
            for key, value in params.items():
                ps.set_index_parameter(faiss_index, key, value)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def dim(self) -> int:
        return int(self.manifest["encoder"]["dim"])

    @property
    def version_dir(self) -> Path:
        return self.root / self.manifest["version_dir"]

    def __len__(self) -> int:
        """Rows: passages (one per document that was not split)."""
        return self.docs.num_rows

    @property
    def documents(self) -> int:
        return int(self.manifest.get("doc_count") or len(self))

    @property
    def chunked(self) -> bool:
        """Whether some document is split into several passages (rows)."""
        return len(self) > self.documents

    def take(
        self, rows: pa.Array | np.ndarray | list[int], columns: tuple[str, ...] = ()
    ) -> pa.Table:
        """Doc store rows ``rows`` (of ``columns`` only, if given) as a one-batch table, at a
        cost in the rows taken, not in the store's size (``arrow.RowTaker``)."""
        if self._taker is None:
            self._taker = RowTaker(self.docs)
        return self._taker.take(rows, columns)

    def texts(self, rows: Iterable[int]) -> dict[int, str]:
        """The text the models see for each doc store row: title and text joined, as the
        embed and rerank stages join them."""
        wanted = sorted({int(r) for r in rows})
        if not wanted:
            return {}
        docs = self.take(wanted, (C.TITLE, C.TEXT))
        return dict(zip(wanted, joined_text(docs.to_batches()[0], (C.TITLE, C.TEXT)), strict=True))

    def check_encoder(self, identity: dict[str, Any]) -> None:
        """Refuse a query encoder that is not the one the index was built with."""
        built = self.manifest["encoder"]
        for key in ("weights_sha256", "dim", "pooling", "normalize"):
            if built.get(key) != identity.get(key):
                raise InputError(
                    f"index {self.name} was built with model {built['name']!r} ({key}={built.get(key)!r}) "
                    f"but the query encoder {identity.get('name')!r} has {key}={identity.get(key)!r}; "
                    f"query with --model {built['name']} or rebuild the index with the new model"
                )

    def metadata(self) -> pa.Table:
        """The documents' metadata as typed columns (``filters.metadata_table``), built once."""
        if self._metadata is None:
            from searchpipe.index.filters import metadata_table

            self._metadata = metadata_table(self.docs)
        return self._metadata

    def filter(self, expr: str) -> RowFilter:
        """The rows a ``WHERE`` clause over the metadata allows (``filters.compile_filter``)."""
        from searchpipe.index.filters import compile_filter

        return compile_filter(self.metadata(), expr)

    def search(
        self, vectors: np.ndarray, k: int, allowed: RowFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` scores and doc store rows for each query vector (rows -1 pad short results).

        With ``allowed``, only those rows: through a FAISS ID selector, or exactly over the
        stored vectors when they are few or the selector found fewer than min(k, allowed).
        """
        if vectors.ndim != 2 or vectors.shape[1] != self.faiss_index.d:
            raise InputError(
                f"query vectors have shape {vectors.shape} but index {self.name} holds "
                f"{self.faiss_index.d}-dimensional vectors (model {self.manifest['encoder']['name']!r})"
            )
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if allowed is None:
            return self.faiss_index.search(queries, min(k, self.faiss_index.ntotal))
        from searchpipe.index.filters import exact_filtered

        want = min(k, len(allowed.rows))
        # a flat index is exact search anyway: over the allowed rows' own vectors it skips the
        # selector's per-row membership test (6x faster at 50% of 100k rows)
        flat = self.manifest.get("factory") == "Flat"
        if not (allowed.exact(self.dim) or flat) or self.vectors is None:
            params = _selector_params(self.faiss_index, allowed.rows, allowed.fraction)
            scores, rows = self.faiss_index.search(queries, want, params=params)
            if want == 0 or (rows[:, want - 1] >= 0).all() or self.vectors is None:
                return scores, rows
        if allowed.vectors is None:
            from searchpipe.arrow import arrow_to_vectors

            stored = self.vectors.column(C.EMBEDDING).take(pa.array(allowed.rows))
            allowed.vectors = np.ascontiguousarray(arrow_to_vectors(stored))
        return exact_filtered(queries, allowed.vectors, allowed.rows, want)


class BuildHook(Protocol):
    """Work on a staged version before it is committed (its BM25 index, ANN tuning).

    Called with the writer holding the staged files and the built FAISS index; returns the
    manifest fields it adds (``{"bm25": {...}}``, ``{"search_params": {...}, "ann": {...}}``).
    """

    def __call__(self, writer: IndexWriter, faiss_index: Any) -> dict[str, Any]: ...


class IndexWriter:
    """Write a new index version and commit it atomically (the single writer holds ``.lock``).

    >>> with IndexWriter("indexes/demo") as w:  # doctest: +SKIP
    ...     w.add_file(...); w.commit(manifest_fields)
    """

    def __init__(self, root: Path, lock_timeout: float = 0.5, keep: int = KEEP_VERSIONS) -> None:
        if keep < 1:
            raise InputError(f"keep must be at least 1 version, got {keep}")
        self.root = root
        self.lock_timeout = lock_timeout
        self.keep = keep
        self.staging: Path | None = None
        self.version = 0
        self._lock: Any = None

    def __enter__(self) -> IndexWriter:
        from filelock import FileLock, Timeout

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(str(self.root / ".lock"))
            self._lock.acquire(timeout=self.lock_timeout)
        except Timeout:
            raise InputError(
                f"index {self.root.name} is being written by another process (lock {self.root / '.lock'}); "
                "wait for it to finish"
            ) from None
        except OSError as e:
            raise RunError(
                f"index {self.root.name} cannot be written ({e.strerror or e}) at {self.root}"
            ) from e
        try:
            self._cleanup_stale()
            current = self.current_manifest()
            self.version = (current["version"] if current else 0) + 1
            staging = self.root / f".staging-{_version_dir(self.version)}-{os.getpid()}"
            staging.mkdir()
            self.staging = staging
        except BaseException as e:
            self.__exit__(type(e), e, None)
            raise
        return self

    def current_manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.root) if (self.root / MANIFEST).exists() else None

    def _cleanup_stale(self) -> None:
        """Remove what a crashed writer left: staging folders and uncommitted versions."""
        committed = self.current_manifest()
        keep = set(committed.get("kept_versions", [])) if committed else set()
        for p in self.root.iterdir():
            if p.name.startswith(".staging-") or p.name.startswith(MANIFEST + ".tmp"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            elif p.is_dir() and VERSION_DIR.fullmatch(p.name) and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def path(self, rel: str) -> Path:
        assert self.staging is not None
        return self.staging / rel

    def commit(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Checksum and fsync the staged files, move them in place, swap the manifest.

        Until the manifest swap nothing is visible; a failure before it (a full disk) removes
        the new version folder and temp files again, so the index stays at its old version.
        """
        assert self.staging is not None
        files = {}
        for f in sorted(p for p in self.staging.rglob("*") if p.is_file()):
            fsync_file(f)
            files[str(f.relative_to(self.staging))] = file_digest(f)
        for d in sorted({f.parent for f in self.staging.rglob("*")} | {self.staging}, reverse=True):
            fsync_dir(d)
        final = self.root / _version_dir(self.version)
        previous = self.current_manifest()
        kept = ([*previous.get("kept_versions", [])] if previous else []) + [final.name]
        kept = kept[-self.keep :]
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": self.root.name,
            "version": self.version,
            "version_dir": final.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **fields,
            "files": files,
            "kept_versions": kept,
        }
        manifest["manifest_sha256"] = manifest_digest(manifest)
        tmp = self.root / f"{MANIFEST}.tmp-{os.getpid()}"
        try:
            os.replace(self.staging, final)
            self.staging = None
            fsync_dir(self.root)
            with open(tmp, "wb") as out:
                out.write(manifest_bytes(manifest))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.root / MANIFEST)
        except BaseException:
            tmp.unlink(missing_ok=True)
            shutil.rmtree(final, ignore_errors=True)
            raise
        # committed: from here on a failure must not remove what readers may already see
        try:
            fsync_dir(self.root)
        except OSError:
            pass  # the swap is visible; the next commit's fsync makes it durable
        for p in self.root.iterdir():  # old versions beyond the ones kept
            if p.is_dir() and VERSION_DIR.fullmatch(p.name) and p.name not in kept:
                shutil.rmtree(p, ignore_errors=True)
        return manifest

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self.staging is not None:  # not committed: leave nothing behind
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging = None
        finally:
            if self._lock is not None:
                self._lock.release()
        if isinstance(exc, OSError):  # a full disk, a read-only folder: no traceback
            current = self.current_manifest() if (self.root / MANIFEST).exists() else None
            where = f"version {current['version']}" if current else "no committed version"
            raise RunError(
                f"writing index {self.root.name} failed ({exc.strerror or exc}); nothing was "
                f"committed and the index stays at {where}; free space or fix {self.root} and retry"
            ) from exc


def verify(name: str | Path, index_root: str | Path | None = None) -> list[str]:
    """Check the manifest and every file of the committed version against its sha256.

    Returns a list of problems, each naming the file (empty when the index is sound).

    >>> verify("sample")  # doctest: +SKIP
    []
    """
    root = _root(name, index_root)
    try:
        manifest = read_manifest(root)
    except RunError as e:
        return [str(e)]
    problems: list[str] = []
    path = root / MANIFEST
    if path.read_bytes() != manifest_bytes(manifest) and "manifest_sha256" in manifest:
        problems.append(f"{path}: bytes differ from the manifest they encode (damaged layout)")
    vdir = root / manifest["version_dir"]
    for rel, meta in manifest["files"].items():
        f = vdir / rel
        if not f.is_file():
            problems.append(f"{f}: missing")
            continue
        got = file_digest(f)
        if got["size"] != meta.get("size"):
            problems.append(f"{f}: size {got['size']} != recorded {meta.get('size')}")
        elif got["sha256"] != meta.get("sha256"):
            problems.append(
                f"{f}: sha256 {got['sha256'][:16]}… != recorded {str(meta.get('sha256'))[:16]}…"
            )
    return problems


def check_index(name: str | Path, index_root: str | Path | None = None) -> dict[str, Any]:
    """Verify every byte, then open the index and check that its parts agree in size.

    Raises ``RunError`` naming the first damaged file; returns a summary when sound.

    >>> check_index("sample")["docs"]  # doctest: +SKIP
    300
    """
    problems = verify(name, index_root)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise RunError(f"index {Path(name).name} is corrupt: {problems[0]}{more}")
    index = Index.open(_root(name, index_root))
    m = index.manifest
    counts = {
        "manifest passage_count": m.get("passage_count", m.get("doc_count")),
        "faiss vectors": index.faiss_index.ntotal,
        "doc store rows": len(index),
    }
    if index.vectors is not None:
        counts["vectors.arrow rows"] = index.vectors.num_rows
    if "bm25" in m:
        counts["bm25 docs"] = m["bm25"].get("docs")
    if len(set(counts.values())) != 1:
        raise RunError(
            f"index {index.name} is inconsistent: "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + "; rebuild it"
        )
    passages = index.docs.column(C.PASSAGE)
    firsts = int(pc.sum(pc.equal(passages, 0)).as_py() or 0)
    ids = pc.count_distinct(index.docs.column(C.DOC_ID)).as_py()
    if not firsts == ids == m.get("doc_count"):
        raise RunError(
            f"index {index.name} is inconsistent: manifest doc_count {m.get('doc_count')}, "
            f"{ids} distinct doc ids, {firsts} first passages; rebuild it"
        )
    return {
        "name": index.name,
        "version": m["version"],
        "docs": index.documents,
        "passages": len(index),
        "files": len(m["files"]),
        "bytes": sum(meta["size"] for meta in m["files"].values()),
        "ok": True,
    }


def _root(name: str | Path, index_root: str | Path | None) -> Path:
    p = Path(name)
    if p.is_dir() and (p / MANIFEST).exists():
        return p
    return index_dir(index_root) / check_name(str(name))


def rows_to_doc_ids(index: Index, rows: np.ndarray | pa.Array) -> pa.Array:
    """Doc ids of doc store rows, in their order."""
    return index.take(rows, (C.DOC_ID,)).column(0).combine_chunks()


def _selector_params(faiss_index: Any, rows: np.ndarray, fraction: float = 1.0) -> Any:
    """Search parameters restricting ``faiss_index`` to ``rows``.

    The tuned efSearch / nprobe is divided by the allowed ``fraction``: a selector rejects the
    other rows as the search visits them, so it must visit about 1/fraction as many to find
    as many allowed neighbours as the unfiltered search finds.
    """
    import faiss

    # keyword construction makes the parameters hold a reference to the selector (faiss's
    # Python wrapper), so it outlives this function
    sel = faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64))
    inner = faiss.downcast_index(faiss_index)
    boost = 1.0 / max(fraction, 1e-6)
    if isinstance(inner, faiss.IndexHNSW):
        ef = min(int(np.ceil(inner.hnsw.efSearch * boost)), 4096)
        return faiss.SearchParametersHNSW(sel=sel, efSearch=ef)  # type: ignore[attr-defined]
    ivf = faiss.try_extract_index_ivf(faiss_index)
    if ivf is not None:
        nprobe = min(int(np.ceil(ivf.nprobe * boost)), ivf.nlist)
        return faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)  # type: ignore[call-arg]
    return faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]
