"""The HTTP application: FastAPI routes over the inference worker and the served versions.

Routes (OpenAPI docs at ``/docs``):

- ``GET /healthz``: the process is up; ``GET /readyz``: every index open and its models warm;
- ``GET /v1/indexes``, ``GET /v1/indexes/{name}``: what is served (``searchpipe info``'s summary);
- ``POST /v1/indexes/{name}/search`` and ``.../search/batch``: queries, micro-batched;
- ``POST /v1/indexes/{name}/documents`` (add or replace) and ``DELETE`` (by id): the same code as
  ``searchpipe add`` / ``delete``, then the new version is served at once;
- ``GET /``: a search page (plain HTML and JS from the package).

Security: without an API key the server takes no writes (403) and reads are open; with one,
writes and reads need ``Authorization: Bearer KEY`` (compared in constant time), except the
health checks and the static page and docs, which hold no index data. Every request body is
bounded and must be JSON; every error is a JSON object ``{"error": {code, message}}`` and never
a traceback.

>>> app = create_app(ServeConfig(names=["sample"]))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from searchpipe.config import Precision, SearchSettings
from searchpipe.errors import InputError, SearchpipeError
from searchpipe.serve.models import (
    LIMITS,
    AddRequest,
    BatchSearchRequest,
    BatchSearchResponse,
    DeleteRequest,
    ErrorResponse,
    IndexList,
    IndexSummary,
    Limits,
    SearchRequest,
    SearchResponse,
    WriteResponse,
    summary_of,
)
from searchpipe.serve.versions import Models, Registry, Watcher
from searchpipe.serve.worker import Answer, Busy, Expired, Worker

log = logging.getLogger("searchpipe.serve")
STATIC = Path(__file__).parent / "static"
MAX_PENDING_WRITES = 8  # writes waiting for the write thread before new ones get 503


@dataclass
class ServeConfig:
    """Everything ``searchpipe serve`` sets; the names are its options'."""

    names: list[str]
    index_root: str | Path | None = None
    rerank: str | None = None
    #: of the query encoder and reranker. fp32 by default: in bf16 a query's embedding depends
    #: on which queries share its micro-batch (padding and kernel blocking change the rounding,
    #: by up to 1.6e-3 per coordinate on MiniLM), so a query could rank differently from one
    #: request to the next; in fp32 batched and single answers agree to 1e-6. 'auto' is faster.
    precision: Precision = "fp32"
    api_key: str | None = None
    threads: int | None = None
    max_batch: int = 32
    batch_wait_ms: float = 2.0
    queue_size: int = 256
    request_timeout_s: float = 30.0
    write_timeout_s: float = 600.0
    poll_s: float = 0.5
    cors: list[str] = field(default_factory=list)
    limits: Limits = LIMITS


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 415, 422, 503, 504)
}


class Server:
    """The parts a running app shares: config, models, versions, worker and watcher."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.models = Models(config.rerank)
        self.registry = Registry(config.names, self.models, config.index_root, config.precision)
        self.worker = Worker(
            self.registry,
            max_batch=config.max_batch,
            max_wait_s=config.batch_wait_ms / 1000,
            queue_size=config.queue_size,
            threads=config.threads,
        )
        self.watcher = Watcher(
            self.registry, lambda fn: self.worker.submit_task(fn, wait=True), config.poll_s
        )
        # writes embed with their own encoder on their own thread, one at a time (as the
        # index's lock allows), so searches keep being answered while a write embeds
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="searchpipe-write")
        self._pending_writes = threading.BoundedSemaphore(MAX_PENDING_WRITES)
        self.startup_error: str | None = None
        self.startup_failure: BaseException | None = None
        #: called when loading fails (the CLI stops uvicorn then, and exits with the error)
        self.on_failure: Callable[[], None] | None = None

    def start(self) -> None:
        self.worker.start()
        self.worker.submit_task(self._load).add_done_callback(self._loaded)

    def _load(self) -> None:
        for name in self.registry.names:
            served = self.registry.open(name)
            self.registry.warm(served)
            self.registry.install(served)
        self.registry.ready = True

    def _loaded(self, future: Any) -> None:
        error = future.exception()
        if error is not None:
            self.startup_error = str(error).splitlines()[0] if str(error) else type(error).__name__
            self.startup_failure = error
            log.error("serve: loading the indexes failed: %s", self.startup_error)
            if self.on_failure is not None:
                self.on_failure()
        else:
            self.watcher.start()
            log.info("serve: ready (%s)", ", ".join(self.registry.names))

    def stop(self) -> None:
        self.watcher.stop()
        self._writes.shutdown(wait=False, cancel_futures=True)
        self.worker.stop()
        self.registry.close()

    def settings_for(self, req: Any) -> SearchSettings:
        """The ``SearchSettings`` a search request asks for, on this server's models."""
        fields = {
            n: getattr(req, n) for n in type(req).model_fields if n in SearchSettings.model_fields
        }
        fields.pop("rerank", None)
        rerank = self.config.rerank is not None if req.rerank is None else req.rerank
        if rerank and self.config.rerank is None:
            raise ApiError(
                400,
                "no_reranker",
                "this server has no reranker; start it with --rerank MODEL, or send rerank: false",
            )
        if not rerank:  # without a reranker its settings mean nothing: one cache entry
            for name in ("rerank_depth", "rerank_blend", "rerank_fusion"):
                fields.pop(name, None)
        return SearchSettings(
            **fields,
            rerank=self.config.rerank if rerank else None,
            precision=self.config.precision,
        )

    def check_index(self, name: str) -> None:
        if name not in self.registry.names:
            served = ", ".join(self.registry.names)
            raise ApiError(
                404, "unknown_index", f"index {name!r} is not served here (served: {served})"
            )
        if name not in self.registry.current:
            raise ApiError(
                503, "not_ready", "the server is still loading its indexes", {"Retry-After": "1"}
            )

    async def search(self, name: str, settings: SearchSettings, query: str) -> Answer:
        if not query.strip():
            raise ApiError(422, "empty_query", "the query is empty or only spaces; send some text")
        future = self.worker.submit_search(name, settings, query, self.config.request_timeout_s)
        return await self._wait(asyncio.wrap_future(future), self.config.request_timeout_s)

    async def _wait(self, awaitable: Awaitable[Any], timeout: float) -> Any:
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except (TimeoutError, Expired):
            raise ApiError(
                504, "timeout", f"the request was not answered within {timeout:g} s; retry later"
            ) from None

    async def write(self, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``fn`` on the write thread; more than ``MAX_PENDING_WRITES`` waiting is 503."""
        if not self._pending_writes.acquire(blocking=False):
            raise Busy(5)
        try:
            future = self._writes.submit(fn)
        except BaseException:
            self._pending_writes.release()
            raise
        future.add_done_callback(lambda _: self._pending_writes.release())
        return await self._wait(asyncio.wrap_future(future), self.config.write_timeout_s)

    def add(self, name: str, documents: list[Any]) -> dict[str, Any]:
        """``add_documents`` with the documents as a JSONL corpus, then serve the new version
        (write thread)."""
        from searchpipe.api.update import add_documents

        served = self.registry.acquire(name)
        try:
            encoder = self.models.document_encoder(served.index)
        finally:
            served.release()
        with tempfile.TemporaryDirectory(prefix="searchpipe-serve-") as tmp:
            corpus = Path(tmp) / "documents.jsonl"
            with open(corpus, "w", encoding="utf-8") as out:
                for doc in documents:
                    out.write(json.dumps(doc.model_dump(), ensure_ascii=False) + "\n")
            result = add_documents(name, corpus, self.registry.root, encoder=encoder)
        return self._served_after(name, result)

    def delete(self, name: str, ids: list[str]) -> dict[str, Any]:
        from searchpipe.api.update import delete_documents

        result = delete_documents(name, ids, self.registry.root)
        return self._served_after(name, result)

    def _served_after(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        """Open the version a write committed (here) and have the worker warm and swap it in
        before the write is answered, so the writer's next search sees its write."""
        if result.get("committed"):
            new = self.registry.open(name)
            self.worker.submit_task(lambda: self.registry.warm_and_install(new), wait=True).result()
        return {**result, "served_version": self.registry.served_version(name)}


class BoundedJSONBody:
    """ASGI middleware: bodies over the route's limit get 413, non-JSON bodies 415.

    The body is read here, up to the limit, and handed on whole, so a client that streams
    more than the limit is cut off without the app buffering it.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.limit_for(scope["path"])
        length = headers.get("content-length")
        if length is not None and not length.isdigit():
            await _send_error(send, 400, "bad_content_length", "Content-Length is not a number")
            return
        if length is not None and int(length) > limit:
            await _send_error(
                send, 413, "body_too_large", f"request bodies are limited to {limit} bytes"
            )
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_error(
                    send, 413, "body_too_large", f"request bodies are limited to {limit} bytes"
                )
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if body and media != "application/json":
            await _send_error(
                send,
                415,
                "unsupported_media_type",
                "send the body as JSON (Content-Type: application/json)",
            )
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    response = error_response(status, code, message)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def create_app(config: ServeConfig) -> FastAPI:
    """The FastAPI app serving ``config.names``; the worker starts with the app's lifespan."""
    server = Server(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.start()
        try:
            yield
        finally:
            server.stop()

    app = FastAPI(
        title="searchpipe",
        summary="Hybrid dense + BM25 search with cross-encoder reranking, over HTTP.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.server = server
    limits = config.limits

    def limit_for(path: str) -> int:
        return limits.max_write_bytes if path.endswith("/documents") else limits.max_body_bytes

    app.add_middleware(BoundedJSONBody, limit_for=limit_for)
    if config.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    _add_error_handlers(app)

    def bearer(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def require_key(request: Request) -> None:
        assert config.api_key is not None
        token = bearer(request)
        if token is None or not hmac.compare_digest(token.encode(), config.api_key.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong API key; send 'Authorization: Bearer KEY'",
                {"WWW-Authenticate": "Bearer"},
            )

    def can_read(request: Request) -> None:
        if config.api_key is not None:
            require_key(request)

    def can_write(request: Request) -> None:
        if config.api_key is None:
            raise ApiError(
                403,
                "writes_disabled",
                "this server takes no writes; start it with --api-key-file FILE",
            )
        require_key(request)

    read = [Depends(can_read)]
    write = [Depends(can_write)]

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up and answering."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorResponse}})
    async def readyz() -> Any:
        """Every index is open and its models are warm."""
        if server.startup_error is not None:
            return error_response(503, "load_failed", server.startup_error)
        if not server.registry.ready:
            return error_response(
                503, "not_ready", "loading indexes and warming models", {"Retry-After": "1"}
            )
        return {
            "status": "ready",
            "indexes": {n: s.version for n, s in server.registry.current.items()},
            "queue": server.worker.depth,
        }

    @app.get(
        "/v1/indexes",
        response_model=IndexList,
        dependencies=read,
        responses=ERRORS,
        tags=["indexes"],
    )
    async def list_indexes() -> IndexList:
        """The served indexes, each at the version being served."""
        return IndexList(
            indexes=[_summary(server, n) for n in server.registry.names],
            rerank=config.rerank,
            auth=config.api_key is not None,
        )

    @app.get(
        "/v1/indexes/{name}",
        response_model=IndexSummary,
        dependencies=read,
        responses=ERRORS,
        tags=["indexes"],
    )
    async def get_index(name: str) -> IndexSummary:
        """One served index: model, size, FAISS settings, measured recall, files."""
        server.check_index(name)
        return _summary(server, name)

    @app.post(
        "/v1/indexes/{name}/search",
        response_model=SearchResponse,
        dependencies=read,
        responses=ERRORS,
        tags=["search"],
    )
    async def search(name: str, body: SearchRequest) -> JSONResponse:
        """Ranked hits for one query, as ``searchpipe query`` gives them."""
        t0 = time.perf_counter()
        server.check_index(name)
        answer = await server.search(name, server.settings_for(body), body.query)
        return JSONResponse(_answer_body(name, body.query, answer, t0))

    @app.post(
        "/v1/indexes/{name}/search/batch",
        response_model=BatchSearchResponse,
        dependencies=read,
        responses=ERRORS,
        tags=["search"],
    )
    async def search_batch(name: str, body: BatchSearchRequest) -> JSONResponse:
        """Ranked hits for several queries with one set of settings."""
        t0 = time.perf_counter()
        server.check_index(name)
        settings = server.settings_for(body)
        answers = await asyncio.gather(*(server.search(name, settings, q) for q in body.queries))
        results = [_answer_body(name, q, a, t0) for q, a in zip(body.queries, answers, strict=True)]
        return JSONResponse({"index": name, "took_ms": _ms(t0), "results": results})

    @app.post(
        "/v1/indexes/{name}/documents",
        response_model=WriteResponse,
        dependencies=write,
        responses=ERRORS,
        tags=["documents"],
    )
    async def add_documents(name: str, body: AddRequest) -> dict[str, Any]:
        """Add documents, or replace those whose id exists (``searchpipe add``)."""
        server.check_index(name)
        return await server.write(lambda: server.add(name, body.documents))

    @app.delete(
        "/v1/indexes/{name}/documents",
        response_model=WriteResponse,
        dependencies=write,
        responses=ERRORS,
        tags=["documents"],
    )
    async def delete_documents(name: str, body: DeleteRequest) -> dict[str, Any]:
        """Delete documents by id (``searchpipe delete``)."""
        server.check_index(name)
        return await server.write(lambda: server.delete(name, body.ids))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _summary(server: Server, name: str) -> IndexSummary:
    served = server.registry.current.get(name)
    if served is not None:
        return summary_of(served.manifest)
    from searchpipe.index.store import read_manifest

    return summary_of(read_manifest(server.registry.path(name)))


def _answer_body(name: str, query: str, answer: Answer, t0: float) -> dict[str, Any]:
    """A ``SearchResponse`` as plain JSON types: the worker built the hits, so they are not
    validated a second time on the event loop (the route's response model documents them,
    and the tests check answers against it)."""
    return {
        "index": name,
        "version": answer.version,
        "query": query,
        "took_ms": _ms(t0),
        "batch": answer.batch,
        "timings": answer.timings,
        "hits": answer.hits,
    }


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def _version() -> str:
    from searchpipe import __version__

    return __version__


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.code, e.message, e.headers)

    @app.exception_handler(Busy)
    async def busy(request: Request, e: Busy) -> JSONResponse:
        return error_response(503, "busy", str(e), {"Retry-After": str(e.retry_after)})

    @app.exception_handler(InputError)
    async def input_error(request: Request, e: InputError) -> JSONResponse:
        return error_response(400, "bad_request", str(e))

    @app.exception_handler(SearchpipeError)
    async def run_error(request: Request, e: SearchpipeError) -> JSONResponse:
        log.error("serve: %s %s failed: %s", request.method, request.url.path, e)
        return error_response(500, "index_error", str(e).splitlines()[0] if str(e) else "error")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        # the offending values are not echoed back: a 1 MB query would come back whole
        details = [
            {
                "loc": [str(p) for p in err.get("loc", ())],
                "msg": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in e.errors()[:20]
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"]) or "body"
        return error_response(422, "invalid_request", f"{where}: {first['msg']}", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("serve: %s %s failed", request.method, request.url.path)
        return error_response(
            500, "internal_error", "internal error; the server log has the details"
        )
