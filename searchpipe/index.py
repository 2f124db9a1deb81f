"""The index folder: FAISS vectors, an Arrow doc store and a manifest that describes them.

Layout of ``indexes/NAME/``::

    manifest.json          the committed version: model, metric, factory, counts, checksums
    v000001/index.faiss    FAISS index; row i is doc store row i
    v000001/docs.arrow     doc store (doc_id, title, text, metadata), Arrow IPC, memory-mapped
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from searchpipe import columns as C
from searchpipe.errors import InputError, RunError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FAISS_FILE = "index.faiss"
DOCS_FILE = "docs.arrow"
KEEP_VERSIONS = 2
NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def file_digest(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def _version_dir(version: int) -> str:
    return f"v{version:06d}"


def read_manifest(root: Path) -> dict[str, Any]:
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
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(
            f"{path} is corrupt ({e}); rebuild the index or restore it from a backup"
        ) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path} has format version {manifest.get('format_version')!r}; this searchpipe reads "
            f"version {FORMAT_VERSION}: rebuild the index"
        )
    return manifest


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

    @classmethod
    def open(cls, name: str | Path, index_root: str | Path | None = None) -> Index:
        root = (
            Path(name)
            if Path(name).is_dir() and (Path(name) / MANIFEST).exists()
            else index_dir(index_root) / check_name(str(name))
        )
        manifest = read_manifest(root)
        vdir = root / manifest["version_dir"]
        for rel, meta in manifest["files"].items():
            f = vdir / rel
            if not f.is_file() or f.stat().st_size != meta["size"]:
                found = f.stat().st_size if f.is_file() else "missing"
                raise RunError(
                    f"index {root.name} is corrupt: {f} should be {meta['size']} bytes, found {found}; "
                    f"run 'searchpipe check {root.name}' and rebuild the index"
                )
        import faiss
        import pyarrow.ipc as ipc

        try:
            faiss_index = faiss.read_index(str(vdir / FAISS_FILE))
            docs = ipc.open_file(pa.memory_map(str(vdir / DOCS_FILE))).read_all()
        except (RuntimeError, pa.ArrowInvalid) as e:
            raise RunError(
                f"index {root.name} could not be read ({str(e).splitlines()[0][:200]}); rebuild it"
            ) from None
        cls._apply_search_params(faiss_index, manifest.get("search_params") or {})
        return cls(root, manifest, faiss_index, docs)

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
        return self.docs.num_rows

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

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` scores and doc store rows for each query vector (rows -1 pad short results)."""
        if vectors.ndim != 2 or vectors.shape[1] != self.faiss_index.d:
            raise InputError(
                f"query vectors have shape {vectors.shape} but index {self.name} holds "
                f"{self.faiss_index.d}-dimensional vectors (model {self.manifest['encoder']['name']!r})"
            )
        k = min(k, self.faiss_index.ntotal)
        return self.faiss_index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)


class IndexWriter:
    """Write a new index version and commit it atomically (the single writer holds ``.lock``).

    >>> with IndexWriter("indexes/demo") as w:  # doctest: +SKIP
    ...     w.add_file(...); w.commit(manifest_fields)
    """

    def __init__(self, root: Path, lock_timeout: float = 0.5) -> None:
        self.root = root
        self.lock_timeout = lock_timeout
        self.staging: Path | None = None
        self.version = 0
        self._lock: Any = None

    def __enter__(self) -> IndexWriter:
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.root / ".lock"))
        try:
            self._lock.acquire(timeout=self.lock_timeout)
        except Timeout:
            raise InputError(
                f"index {self.root.name} is being written by another process (lock {self.root / '.lock'}); "
                "wait for it to finish"
            ) from None
        self._cleanup_stale()
        current = self.current_manifest()
        self.version = (current["version"] if current else 0) + 1
        self.staging = self.root / f".staging-{_version_dir(self.version)}-{os.getpid()}"
        self.staging.mkdir()
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
            elif p.is_dir() and p.name.startswith("v") and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def path(self, rel: str) -> Path:
        assert self.staging is not None
        return self.staging / rel

    def commit(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Checksum and fsync the staged files, move them in place, swap the manifest."""
        assert self.staging is not None
        files = {}
        for f in sorted(p for p in self.staging.rglob("*") if p.is_file()):
            _fsync_file(f)
            files[str(f.relative_to(self.staging))] = file_digest(f)
        for d in sorted({f.parent for f in self.staging.rglob("*")} | {self.staging}, reverse=True):
            _fsync_dir(d)
        final = self.root / _version_dir(self.version)
        os.replace(self.staging, final)
        self.staging = None
        previous = self.current_manifest()
        kept = ([*previous.get("kept_versions", [])] if previous else []) + [final.name]
        kept = kept[-KEEP_VERSIONS:]
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": self.root.name,
            "version": self.version,
            "version_dir": final.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **fields,
            "files": files,
            "kept_versions": kept,
        }
        tmp = self.root / f"{MANIFEST}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.root)
        os.replace(tmp, self.root / MANIFEST)
        _fsync_dir(self.root)
        for p in self.root.iterdir():  # old versions beyond the ones kept
            if p.is_dir() and p.name.startswith("v") and p.name not in kept:
                shutil.rmtree(p, ignore_errors=True)
        return manifest

    def __exit__(self, *exc: object) -> None:
        if self.staging is not None:  # not committed: leave nothing behind
            shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()


def verify(name: str | Path, index_root: str | Path | None = None) -> list[str]:
    """Check every file of the committed version against its recorded sha256.

    Returns a list of problems (empty when the index is sound).
    """
    root = index_dir(index_root) / check_name(str(name))
    problems: list[str] = []
    try:
        manifest = read_manifest(root)
    except RunError as e:
        return [str(e)]
    vdir = root / manifest["version_dir"]
    for rel, meta in manifest["files"].items():
        f = vdir / rel
        if not f.is_file():
            problems.append(f"{f}: missing")
            continue
        got = file_digest(f)
        if got["size"] != meta["size"]:
            problems.append(f"{f}: size {got['size']} != recorded {meta['size']}")
        elif got["sha256"] != meta["sha256"]:
            problems.append(f"{f}: sha256 {got['sha256'][:16]}… != recorded {meta['sha256'][:16]}…")
    return problems


def rows_to_doc_ids(docs: pa.Table, rows: np.ndarray) -> pa.Array:
    """Doc ids of doc store rows (a zero-copy ``take`` on the memory-mapped store)."""
    return docs.column(C.DOC_ID).take(pa.array(rows.reshape(-1), pa.int64())).combine_chunks()


@contextmanager
def timed(stats: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        stats[key] = stats.get(key, 0.0) + time.perf_counter() - t0
