"""The index versions a server answers from, the models they share, and live version swaps.

Every served index has one current ``ServedVersion``: an opened ``Index`` and the
``Searcher`` objects built on it, one per distinct setting (LRU). When another process commits
a new version (``searchpipe add``, ``delete``, ``index``), the ``Watcher`` sees the manifest
change, opens the new version beside the old one (file IO only, on its own thread) and hands
the inference worker a task that warms it (a first query through every model) and swaps it
in, in one step: requests the worker takes after the swap answer from the new version, and
each answer names its version. The old version is closed when the last request holding it
is done. A version that fails to open is logged and the old one keeps serving.

>>> registry = Registry(["sample"], models=Models(rerank=None))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from searchpipe.api.query import Searcher
from searchpipe.config import Precision, SearchSettings
from searchpipe.errors import InputError
from searchpipe.index.store import MANIFEST, Index, check_name, index_dir, read_manifest

log = logging.getLogger("searchpipe.serve")

SEARCHERS_PER_VERSION = 32  # distinct settings (filters, k, retrievers) kept built


class Models:
    """The loaded models, shared by all versions of all indexes: the query encoders and the
    reranker run on the worker thread only, the document encoders on the write thread only.

    Encoders are keyed by the weights' sha256 that the index manifest records and by
    precision, so every version of an index (and every index of the same model) shares one
    query encoder, and writes embed documents as ``searchpipe add`` does: at the precision the
    index was built with.
    """

    def __init__(self, rerank: str | None) -> None:
        self.rerank = rerank
        self.encoders: dict[tuple[str, str], Any] = {}
        self.reranker: Any = None
        #: the write thread's own encoders: a model object is never run by two threads
        self.document_encoders: dict[tuple[str, str], Any] = {}

    @staticmethod
    def _key(index: Index, precision: str) -> tuple[str, str]:
        from searchpipe.models.precision import resolve_precision

        return index.manifest["encoder"]["weights_sha256"], resolve_precision(precision)

    def searcher(self, index: Index, settings: SearchSettings) -> Searcher:
        """A ``Searcher`` for ``settings`` on ``index`` that loads each model once per server."""
        key = self._key(index, settings.precision)
        reranker = self.reranker if settings.rerank else None
        searcher = Searcher(index, settings, encoder=self.encoders.get(key), reranker=reranker)
        if searcher.encoder is not None:
            self.encoders.setdefault(key, searcher.encoder)
        if settings.rerank and self.reranker is None:
            self.reranker = searcher.reranker
        return searcher

    def document_encoder(self, index: Index) -> Any:
        """The encoder ``add_documents`` would load for ``index`` (its model, at the precision
        and length it was built with), loaded once; for the write thread only."""
        built = index.manifest["encoder"]
        key = self._key(index, built.get("precision", "auto"))
        if key not in self.document_encoders:
            from searchpipe.models.biencoder import BiEncoder

            self.document_encoders[key] = BiEncoder(
                built["name"], precision=key[1], max_length=built.get("max_length")
            )
        return self.document_encoders[key]


class ServedVersion:
    """One opened version of an index, with its searchers; closed once retired and unused."""

    def __init__(self, index: Index) -> None:
        self._index: Index | None = index
        self.name = index.name
        self.version = int(index.manifest["version"])
        self.manifest = index.manifest
        self._searchers: OrderedDict[SearchSettings, Searcher] = OrderedDict()
        self._lock = threading.Lock()
        self._refs = 0
        self._retired = False

    @property
    def index(self) -> Index:
        if self._index is None:
            raise RuntimeError(f"index {self.name} version {self.version} is closed")
        return self._index

    @property
    def closed(self) -> bool:
        return self._index is None

    def searcher(self, settings: SearchSettings, models: Models) -> Searcher:
        """The searcher for ``settings`` (built on first use; the least used is dropped)."""
        searcher = self._searchers.get(settings)
        if searcher is None:
            searcher = models.searcher(self.index, settings)
            self._searchers[settings] = searcher
            while len(self._searchers) > SEARCHERS_PER_VERSION:
                self._searchers.popitem(last=False)
        else:
            self._searchers.move_to_end(settings)
        return searcher

    def acquire(self) -> ServedVersion:
        with self._lock:
            if self._index is None:
                raise RuntimeError(f"index {self.name} version {self.version} is closed")
            self._refs += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            close = self._retired and self._refs == 0
        if close:
            self._close()

    def retire(self) -> None:
        """No new requests will take this version; close it when the last one is done."""
        with self._lock:
            self._retired = True
            close = self._refs == 0
        if close:
            self._close()

    def _close(self) -> None:
        self._searchers.clear()
        self._index = None  # its memory maps go with the last reference
        log.info("index %s: version %d closed", self.name, self.version)


class Registry:
    """The current version of each served index, and the models."""

    def __init__(
        self,
        names: list[str],
        models: Models,
        index_root: str | Path | None = None,
        precision: Precision = "fp32",
    ) -> None:
        if not names:
            raise InputError("name at least one index to serve")
        self.names = [check_name(n) for n in dict.fromkeys(names)]
        self.root = index_dir(index_root)
        self.models = models
        self.precision = precision  # of every search this server runs (see ServeConfig)
        self.current: dict[str, ServedVersion] = {}
        self.ready = False
        self._lock = threading.Lock()
        for name in self.names:  # fail at start, naming the index, rather than at first query
            read_manifest(self.root / name)

    def path(self, name: str) -> Path:
        return self.root / name

    def open(self, name: str) -> ServedVersion:
        """Open the committed version of ``name`` (files only; no model runs)."""
        return ServedVersion(Index.open(self.path(name)))

    def warm(self, served: ServedVersion) -> None:
        """Run one query through each model the default settings use (worker thread only)."""
        import pyarrow as pa

        from searchpipe import columns as C

        queries = pa.table({C.QUERY_ID: ["warm"], C.TEXT: ["warm up the models"]})
        for rerank in dict.fromkeys([self.models.rerank, None]):
            # the settings a request with no options gets (Server.settings_for)
            settings = SearchSettings.model_validate(
                {"rerank": rerank, "precision": self.precision}
            )
            searcher = served.searcher(settings, self.models)
            hits = searcher.search_batch(queries)
            list(searcher.snippet(hits.to_batches()))  # loads the stemmer and stopwords once

    def install(self, served: ServedVersion) -> bool:
        """Make ``served`` the current version of its index unless a newer one already is."""
        with self._lock:
            old = self.current.get(served.name)
            if old is not None and old.version >= served.version:
                stale = True
            else:
                self.current[served.name] = served
                stale = False
        if stale:
            served.retire()
            return False
        if old is not None:
            log.info("index %s: now serving version %d", served.name, served.version)
            old.retire()
        return True

    def warm_and_install(self, served: ServedVersion) -> None:
        """Warm ``served`` and make it current, unless a newer version already is (worker)."""
        if served.version <= self.served_version(served.name):
            served.retire()
            return
        try:
            self.warm(served)
        except BaseException:
            served.retire()
            raise
        self.install(served)

    def served_version(self, name: str) -> int:
        current = self.current.get(name)
        return current.version if current is not None else 0

    def acquire(self, name: str) -> ServedVersion:
        """The current version of ``name``, held until ``release()``."""
        with self._lock:
            served = self.current[name]
            return served.acquire()

    def close(self) -> None:
        with self._lock:
            served, self.current = list(self.current.values()), {}
        for s in served:
            s.retire()


class Watcher:
    """Polls each served index's manifest and hands newer versions to ``submit`` to install."""

    def __init__(
        self,
        registry: Registry,
        submit: Callable[[Callable[[], Any]], Any],
        poll_s: float = 0.5,
    ) -> None:
        self.registry = registry
        self.submit = submit
        self.poll_s = poll_s
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._failed: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="searchpipe-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            for name in self.registry.names:
                try:
                    self.check(name)
                except Exception as e:  # a damaged or half-removed index: keep serving the old
                    self._note_failure(name, e)

    def check(self, name: str) -> bool:
        """Open and submit the committed version of ``name`` if it is newer than the served one."""
        if name not in self.registry.current:  # still loading at start
            return False
        st = (self.registry.path(name) / MANIFEST).stat()
        stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
        if self._seen.get(name) == stamp:
            return False
        version = int(read_manifest(self.registry.path(name))["version"])
        if version <= self.registry.served_version(name):
            self._seen[name] = stamp
            return False
        served = self.registry.open(name)
        self._seen[name] = stamp
        self._failed.pop(name, None)

        self.submit(lambda: self.registry.warm_and_install(served))
        return True

    def _note_failure(self, name: str, e: Exception) -> None:
        try:
            version = int(read_manifest(self.registry.path(name))["version"])
        except Exception:
            version = -1
        if self._failed.get(name) != version:  # once per version, not every poll
            self._failed[name] = version
            log.warning(
                "index %s: version %s could not be opened (%s); still serving version %d",
                name,
                version,
                str(e).splitlines()[0] if str(e) else type(e).__name__,
                self.registry.served_version(name),
            )
