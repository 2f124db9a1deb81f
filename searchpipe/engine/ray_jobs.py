"""Shard jobs on a Ray cluster: the input shards of ``engine.shards`` over a Ray Data actor pool.

The driver has already read and validated its input (a corpus, read and chunked; a queries
file) into input shards, so a bad record fails with the same file and line as a local run.
Here Ray Data schedules the shards still missing over a pool of actors (``map_batches`` with
a callable class, a ``ShardWorker``: one model per actor, torch threads = the actor's CPUs);
each actor reads its input shard, checks its sha256, runs its stages over it and writes the
output shard and its record atomically. Only shard names and checksums travel through Ray;
the driver reads the output shards back in input order, so nothing depends on the order Ray
returns work in. A failed run (a killed worker, a lost node) is retried for the shards still
missing, up to ``EngineConfig.attempts`` times; a killed driver resumes from the completed
shards on its next run.

Two workers: ``EmbedShards`` (``searchpipe index --engine ray``) here, and ``SearchShards``
in ``searchpipe.api.query`` (``searchpipe search --engine ray``), which needs the query
builder of the layer above.

Ray is imported only inside these functions and the actors.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from searchpipe.config import EngineConfig
from searchpipe.engine.shards import Shard, ShardLayout, done, read_outputs
from searchpipe.errors import InputError, RunError
from searchpipe.index.store import IndexWriter
from searchpipe.stages.embed import Embed

log = logging.getLogger(__name__)


class ShardWorker:
    """A Ray Data callable class: each row of a batch names one input shard to turn into one
    output shard. Subclasses load their models in ``__init__`` and say what a shard becomes
    in ``process``; ``stats`` adds counts of their own to the shard's record.

    Input columns: ``work`` (the work dir, a path or URI), ``output`` (its folder the
    outputs go to), ``shard`` (a name), ``input_sha256``; output: ``shard``, ``rows``,
    ``sha256``, ``host``, ``pid``.
    """

    def __init__(self, threads: int, fingerprint: str) -> None:
        import torch

        torch.set_num_threads(threads)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.fingerprint = fingerprint

    def process(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """Counts for the shard just processed, kept in its record (the driver sums them)."""
        return {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list[Any]] = {k: [] for k in ("shard", "rows", "sha256", "host", "pid")}
        for task in batch.to_pylist():
            layout = ShardLayout(task["work"], task["output"])
            work, name = layout.dir, task["shard"]
            source = layout.input_path(name)
            got = work.sha256(source)
            if got != task["input_sha256"]:
                raise RunError(
                    f"worker {self.host}: input shard {work.show(source)} has sha256 "
                    f"{got[:16]}, the driver wrote {task['input_sha256'][:16]}; is the work dir "
                    "shared at the same path on every node?"
                )
            sizes: list[int] = []
            produced = list(self.process(_sized(work.batches(source), sizes)))
            if not produced:
                raise RunError(
                    f"worker {self.host}: input shard {work.show(source)} produced no batches"
                )
            digest = work.write_arrow(layout.output_path(name), produced, produced[0].schema)
            rows = sum(b.num_rows for b in produced)
            record = {
                "input_sha256": task["input_sha256"],
                "input_rows": sum(sizes),
                "fingerprint": self.fingerprint,
                "rows": rows,
                "sha256": digest,
                "host": self.host,
                "pid": self.pid,
                **self.stats(),
            }
            work.write_json(layout.record_path(name), record)
            for key, value in (
                ("shard", name), ("rows", rows), ("sha256", digest),
                ("host", self.host), ("pid", self.pid),
            ):  # fmt: skip
                out[key].append(value)
        return pa.table(out)


class EmbedShards(ShardWorker):
    """Embed passages with our ``Embed`` stage, in the driver's model and settings."""

    def __init__(
        self, embed: dict[str, Any], identity: dict[str, Any], threads: int, fingerprint: str
    ) -> None:
        super().__init__(threads, fingerprint)
        self.embed = Embed(**embed)
        self.embed.open()
        assert self.embed.encoder is not None
        mine = self.embed.encoder.identity()
        if mine != identity:
            raise RunError(
                f"worker {self.host}: model {embed['model']!r} is {mine} here but {identity} on "
                "the driver; install the same model (and searchpipe) on every node"
            )

    def process(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return self.embed.process(batches)


class RayShardJob:
    """Run ``worker`` over a job's input shards on Ray, then stream its output shards back in
    input order.

    ``kwargs`` are the worker's constructor arguments (``threads`` is added: the actor's
    CPUs); ``fingerprint`` names the settings an output shard must have been made with to be
    reused; ``output`` is the folder the outputs go to (``ShardLayout``); ``verbs`` say what
    a worker does to a shard, for the log and errors.

    >>> job = RayShardJob(work, engine, SearchShards, kwargs, fp, "search")  # doctest: +SKIP
    >>> shards = write_inputs(queries, job.layout, None, fp)  # doctest: +SKIP
    >>> for batch in job.run(shards): ...  # doctest: +SKIP
    """

    #: one output row per input row, in order (checked by SOURCE_ROW when read back)
    row_per_input = False

    def __init__(
        self,
        work: str | Path,
        engine: EngineConfig,
        worker: type[ShardWorker],
        kwargs: dict[str, Any],
        fingerprint: str,
        output: str,
        verbs: tuple[str, str] = ("process", "processed"),
    ) -> None:
        self.layout = ShardLayout(work, output)
        self.verb, self.past = verbs  # what a worker does to a shard, for the log and errors
        self.engine = engine
        self.worker = worker
        self.kwargs = kwargs
        self.fingerprint = fingerprint
        self.shards: list[Shard] = []
        self.reused = 0
        self.workers = 0
        self.seconds = 0.0

    def run(self, shards: list[Shard]) -> Iterator[pa.RecordBatch]:
        """Make the output shards not yet made, then yield every shard's rows in order."""
        self.shards = shards
        missing = [s for s in shards if not done(self.layout, s, self.fingerprint)]
        self.reused = len(shards) - len(missing)
        if self.reused:
            log.info(
                "ray: %d of %d shard(s) already %s, reusing them",
                self.reused, len(shards), self.past,
            )  # fmt: skip
        t0 = time.perf_counter()
        reason = ""
        for attempt in range(1, self.engine.attempts + 1):
            if not missing:
                break
            try:
                self._run(missing)
                reason = "finished without writing them"
            except Exception as e:  # a killed worker, a lost node, a model that fails
                reason = _first_line(e)
            missing = [s for s in shards if not done(self.layout, s, self.fingerprint)]
            if missing and attempt < self.engine.attempts:
                log.warning(
                    "ray: attempt %d failed (%s); %d shard(s) still to %s, retrying",
                    attempt, reason, len(missing), self.verb,
                )  # fmt: skip
        if missing:
            raise RunError(
                f"ray: {len(missing)} of {len(shards)} shard(s) not {self.past} after "
                f"{self.engine.attempts} attempt(s) ({reason}); run the same command again to "
                "resume from the completed shards"
            )
        self.seconds = time.perf_counter() - t0
        yield from read_outputs(self.layout, shards, row_per_input=self.row_per_input)

    def _run(self, shards: list[Shard]) -> None:
        connect(self.engine)
        import ray
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        cpus = self.engine.cpus_per_worker
        available = int(ray.cluster_resources().get("CPU", 1))
        self.workers = self.engine.workers or max(1, available // cpus)
        pool = min(self.workers, len(shards))
        tasks = [
            {
                "work": self.layout.dir.uri,
                "output": self.layout.output,
                "shard": s.name,
                "input_sha256": s.sha256,
            }
            for s in shards
        ]
        log.info(
            "ray: %s: %d shard(s) on %d worker(s) of %d CPU(s)",
            self.verb, len(shards), pool, cpus,
        )  # fmt: skip
        results = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
            self.worker,
            batch_size=1,
            batch_format="pyarrow",
            fn_constructor_kwargs={**self.kwargs, "threads": cpus, "fingerprint": self.fingerprint},
            num_cpus=cpus,
            compute=ray.data.ActorPoolStrategy(size=pool),
        )
        for _ in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            pass  # each shard's record is on disk already; this only drives the execution

    def records(self) -> list[dict[str, Any]]:
        """Each shard's record, in input order (reused shards included)."""
        return [self.layout.dir.read_json(self.layout.record_path(s.name)) for s in self.shards]

    def summary(self) -> dict[str, Any]:
        """The engine and the shard list, as a manifest or a run summary records them."""
        return {
            "kind": "ray",
            "address": self.engine.address or "local",
            "workers": self.workers,
            "cpus_per_worker": self.engine.cpus_per_worker,
            "work_dir": self.layout.dir.uri,
            "shard_rows": self.engine.shard_rows,  # None: one shard per ingest batch
            "reused_shards": self.reused,
            f"{self.layout.output}_seconds": round(self.seconds, 2),
            "shards": [
                {
                    "name": s.name,
                    "first_row": s.first_row,
                    "rows": s.rows,
                    "input_sha256": s.sha256,
                    "sha256": record.get("sha256"),
                }
                for s, record in zip(self.shards, self.records(), strict=True)
            ],
        }


class RayEmbedJob(RayShardJob):
    """Embed a job's input shards on Ray (``EmbedShards``), then stream the embedded
    passages in corpus order.

    >>> job = RayEmbedJob(work, EngineConfig(kind="ray"), embed)  # doctest: +SKIP
    >>> shards = write_inputs(passages, job.layout, 4096, job.fingerprint)  # doctest: +SKIP
    >>> for batch in job.run(shards): ...  # doctest: +SKIP
    """

    row_per_input = True

    def __init__(self, work: str | Path, engine: EngineConfig, embed: Embed) -> None:
        assert embed.encoder is not None, "open the Embed stage first (its model's identity)"
        settings = {
            "model": embed.model_name,
            "fields": embed.fields,
            # resolved here ("auto" is bf16 only where the CPU has it): every node embeds
            # in the driver's precision, or the shards would not be the local build's
            "precision": embed.encoder.precision,
            "token_budget": embed.token_budget,
            "batch_size": embed.batch_size,
            "max_length": embed.max_length,
            "backend": embed.backend,
        }
        kwargs = {"embed": settings, "identity": embed.encoder.identity()}
        fingerprint = embed.fingerprint("")  # the model and its settings
        super().__init__(
            work, engine, EmbedShards, kwargs, fingerprint, "embed", ("embed", "embedded")
        )


class RecordEngine:
    """A build hook: the manifest's ``engine`` section, written after the job has run."""

    def __init__(self, job: RayShardJob) -> None:
        self.job = job

    def __call__(self, writer: IndexWriter, faiss_index: Any) -> dict[str, Any]:
        return {"engine": self.job.summary()}


def connect(engine: EngineConfig) -> None:
    """Connect to ``engine.address`` (or start Ray here) unless this process already is."""
    try:
        import ray
    except ImportError:
        raise InputError(
            "--engine ray needs Ray: pip install 'searchpipe[ray]' (ray[data] 2.60.0)"
        ) from None
    if not ray.is_initialized():
        logging.getLogger("ray").setLevel(logging.WARNING)
        try:
            ray.init(
                address=engine.address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=True,
            )
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise RunError(
                f"ray: could not connect to {engine.address or 'a new local cluster'} "
                f"({_first_line(e)}); check --ray-address (auto, HOST:PORT or ray://HOST:10001)"
            ) from None


def _sized(batches: Iterator[pa.RecordBatch], sizes: list[int]) -> Iterator[pa.RecordBatch]:
    """Pass batches through, noting each one's rows in ``sizes``."""
    for batch in batches:
        sizes.append(batch.num_rows)
        yield batch


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
