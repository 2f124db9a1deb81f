"""The inference worker: one thread owns the models and answers queries in micro-batches.

The event loop never runs a model. It puts a job on a bounded queue and awaits the job's
future; a full queue is refused at once (HTTP 503 with ``Retry-After``). The worker takes the
first job, then keeps taking jobs for at most ``max_wait_s`` (and whatever is already
waiting) up to ``max_batch``, groups them by index and settings, and answers each group in one
``Searcher.search_batch`` pass: one forward pass embeds the group's queries, FAISS searches
them as one matrix, BM25 and the reranker take them together. Each job then gets its own
hits. ``max_batch=1`` turns micro-batching off.

Other work that needs the worker's models (warming a new index version before it is swapped
in) goes through the same queue as a task, so those models have one owner and a swap happens
between two batches, never inside one. (Writes embed documents with their own encoder on the
server's write thread, so searches keep being answered while a write runs.)

>>> worker = Worker(registry, max_batch=32, max_wait_s=0.002)  # doctest: +SKIP
>>> worker.start(); future = worker.submit_search("sample", SearchSettings(), "bees")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from searchpipe import columns as C
from searchpipe.config import SearchSettings
from searchpipe.serve.snippet import window
from searchpipe.serve.versions import Registry, ServedVersion

log = logging.getLogger("searchpipe.serve")


class Busy(Exception):
    """The queue is full: the client should retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry after {retry_after} s")
        self.retry_after = retry_after


class Expired(Exception):
    """The job waited in the queue past its deadline and was not run."""


@dataclass
class Answer:
    """One query's answer: the version that gave it, its hits and the pass's stage times."""

    version: int
    hits: list[dict[str, Any]]
    timings: dict[str, float]
    batch: int


@dataclass
class SearchJob:
    index: str
    settings: SearchSettings
    query: str
    deadline: float  # time.monotonic()
    future: Future[Answer] = field(default_factory=Future)


@dataclass
class Task:
    fn: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


_STOP = object()


class Worker:
    """The one thread that runs models; see the module docstring."""

    def __init__(
        self,
        registry: Registry,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        queue_size: int = 256,
        threads: int | None = None,
    ) -> None:
        if max_batch < 1 or queue_size < 1:
            raise ValueError(f"max_batch ({max_batch}) and queue_size ({queue_size}) must be >= 1")
        self.registry = registry
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s if max_batch > 1 else 0.0
        self.threads = threads
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="searchpipe-infer", daemon=True)
        self._stopping = threading.Event()
        self.batches = 0  # passes run, and queries answered in them (for /readyz and tests)
        self.answered = 0

    def start(self) -> None:
        if self.threads is not None:
            import torch

            # once, before any model runs: torch's intra-op pool is process-wide
            torch.set_num_threads(self.threads)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the job at hand; jobs still queued are cancelled."""
        self._stopping.set()
        try:
            self._queue.put_nowait(_STOP)  # wakes an idle worker; a busy one sees the flag
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, SearchJob | Task):
                job.future.cancel()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit_search(
        self, index: str, settings: SearchSettings, query: str, timeout_s: float = 30.0
    ) -> Future[Answer]:
        """Queue one query; raises ``Busy`` when the queue is full."""
        job = SearchJob(index, settings, query, time.monotonic() + timeout_s)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Busy(self._retry_after()) from None
        return job.future

    def submit_task(self, fn: Callable[[], Any], *, wait: bool = False) -> Future[Any]:
        """Queue ``fn`` to run on the worker thread. ``wait``: block until there is room
        (internal tasks such as a version swap); else a full queue raises ``Busy``."""
        task = Task(fn)
        try:
            self._queue.put(task, block=wait)
        except queue.Full:
            raise Busy(self._retry_after()) from None
        return task.future

    def _retry_after(self) -> int:
        # about how long the queue takes to drain at one batch per ~50 ms, at least 1 s
        return max(1, math.ceil(self._queue.qsize() / self.max_batch * 0.05))

    def _run(self) -> None:
        while not self._stopping.is_set():
            job = self._queue.get()
            if job is _STOP:
                return
            if isinstance(job, Task):
                self._run_task(job)
                continue
            batch, after = self._collect(job)
            self._answer(batch)
            if after is _STOP or self._stopping.is_set():
                return
            if after is not None:
                self._run_task(after)

    def _collect(self, first: SearchJob) -> tuple[list[SearchJob], Any]:
        """``first`` and the search jobs that follow it within the wait, up to ``max_batch``;
        a task (or stop) that comes up ends the batch and is returned to run after it."""
        batch = [first]
        until = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            left = until - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(job, SearchJob):
                return batch, job
            batch.append(job)
        return batch, None

    def _run_task(self, task: Task) -> None:
        if not task.future.set_running_or_notify_cancel():
            return
        try:
            task.future.set_result(task.fn())
        except BaseException as e:
            if not isinstance(e, Exception):
                raise
            task.future.set_exception(e)

    def _answer(self, batch: list[SearchJob]) -> None:
        now = time.monotonic()
        groups: dict[tuple[str, SearchSettings], list[SearchJob]] = {}
        for job in batch:
            if not job.future.set_running_or_notify_cancel():
                continue  # the client gave up (timed out) while it waited
            if now > job.deadline:
                job.future.set_exception(Expired("the request waited in the queue too long"))
                continue
            groups.setdefault((job.index, job.settings), []).append(job)
        for (index, settings), jobs in groups.items():
            try:
                served = self.registry.acquire(index)
            except Exception as e:
                for job in jobs:
                    job.future.set_exception(e)
                continue
            try:
                answers = self._search(served, settings, [j.query for j in jobs])
            except Exception as e:
                for job in jobs:
                    job.future.set_exception(e)
            else:
                for job, answer in zip(jobs, answers, strict=True):
                    job.future.set_result(answer)
                self.batches += 1
                self.answered += len(jobs)
            finally:
                served.release()

    def _search(
        self, served: ServedVersion, settings: SearchSettings, queries: list[str]
    ) -> list[Answer]:
        """Answer ``queries`` in one pass on ``served``; one ``Answer`` per query, in order."""
        searcher = served.searcher(settings, self.registry.models)
        table = pa.table({C.QUERY_ID: [str(i) for i in range(len(queries))], C.TEXT: queries})
        profile: dict[str, float] = {}
        hits = searcher.search_batch(table, settings.k, profile)
        timings = stage_times(profile)
        if hits.num_rows:
            # what Searcher.search adds to each hit: title, metadata, the matched passage and
            # its highlighted terms (searchpipe.stages.snippet)
            hits = pa.Table.from_batches(list(searcher.snippet(hits.to_batches())))
        per_query: list[list[dict[str, Any]]] = [[] for _ in queries]
        for hit in hits.to_pylist() if hits.num_rows else []:
            per_query[int(hit[C.QUERY_ID])].append(hit)
        retriever = resolved_retriever(settings, served.manifest)
        answers = []
        for picked in per_query:
            out = []
            for hit in picked:
                spans = [(h["start"], h["end"]) for h in hit[C.HIGHLIGHTS] or []]
                snippet, inside = window(hit[C.TEXT] or "", spans)
                out.append(
                    {
                        "rank": hit[C.RANK],
                        "doc_id": hit[C.DOC_ID],
                        "score": finite(hit[C.SCORE]),
                        "scores": stage_scores(hit, retriever),
                        "title": hit[C.TITLE] or "",
                        "snippet": snippet,
                        "highlights": inside,
                        "passage": hit.get(C.PASSAGE),
                        "start": hit.get(C.START),
                        "end": hit.get(C.END),
                        "metadata": json.loads(hit[C.METADATA]) if hit[C.METADATA] else {},
                    }
                )
            answers.append(Answer(served.version, out, timings, len(queries)))
        return answers


def resolved_retriever(settings: SearchSettings, manifest: dict[str, Any]) -> str:
    """The first stage ``auto`` stands for on this index (as ``query_stages`` decides it)."""
    if settings.retriever != "auto":
        return settings.retriever
    return "hybrid" if "bm25" in manifest else "dense"


def stage_scores(hit: dict[str, Any], retriever: str) -> dict[str, float | int | None]:
    """Each stage's score of one hit: ``dense``/``bm25`` (each list's raw score), ``fused``
    (hybrid), ``rerank`` and ``first_stage_rank`` (when reranked)."""
    if retriever == "hybrid":
        scores: dict[str, float | int | None] = {
            "dense": finite(hit.get("dense_score")),
            "bm25": finite(hit.get("bm25_score")),
            "fused": finite(hit[C.SCORE]),
        }
    else:
        scores = {retriever: finite(hit[C.SCORE])}
    if C.RERANK_SCORE in hit:
        scores["rerank"] = finite(hit[C.RERANK_SCORE])
        scores["first_stage_rank"] = hit[C.FIRST_STAGE_RANK]
    return scores


def stage_times(profile: dict[str, float]) -> dict[str, float]:
    """Milliseconds per stage from ``Searcher.search_batch``'s profile: the embed stage,
    FAISS, BM25, fusion (the fuse stage less the two searches inside it) and rerank."""
    dense, bm25 = profile.get("faiss", 0.0), profile.get("bm25", 0.0)
    fuse = max(0.0, profile.get("fuse", 0.0) - dense - bm25)
    ms = {
        "embed": profile.get("embed", 0.0),
        "dense": dense,
        "bm25": bm25,
        "fuse": fuse,
        "rerank": profile.get("rerank", 0.0),
    }
    return {k: round(v * 1000, 3) for k, v in ms.items()}


def finite(x: Any) -> float | None:
    """A score for JSON: None for a missing, NaN or infinite one."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
