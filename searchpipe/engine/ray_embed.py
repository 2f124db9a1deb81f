"""Embedding on a Ray cluster: the shards of ``engine.shards`` over a Ray Data actor pool.

The driver has already read, validated and chunked the corpus into input shards (so a bad
record fails with the same file and line as a local run). Here Ray Data schedules the shards
still missing over a pool of actors (``map_batches`` with a callable class: one model per
actor, torch threads = the actor's CPUs); each actor reads its input shard, checks its
sha256, embeds it with our ``Embed`` stage and writes the embedding shard and its record
atomically. Only shard names and checksums travel through Ray; rows carry their SOURCE_ROW,
so nothing depends on the order Ray returns work in. A failed run (a killed worker, a lost
node) is retried for the shards still missing, up to ``EngineConfig.attempts`` times; a
killed driver resumes from the completed shards on its next run.

Ray is imported only inside these functions and the actor.
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
from searchpipe.engine.shards import (
    Shard,
    ShardLayout,
    embedded,
    read_embedded,
    read_json,
    write_arrow,
    write_json,
)
from searchpipe.errors import InputError, RunError
from searchpipe.files import sha256_file
from searchpipe.index.store import IndexWriter
from searchpipe.stages.embed import Embed

log = logging.getLogger(__name__)


class EmbedShards:
    """A Ray Data callable class: each row of a batch names one shard to embed.

    Input columns: ``input``, ``input_sha256``, ``output``, ``record``; output: ``shard``,
    ``rows``, ``sha256``, ``host``, ``pid``.
    """

    def __init__(
        self, embed: dict[str, Any], identity: dict[str, Any], threads: int, fingerprint: str
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.fingerprint = fingerprint
        self.embed = Embed(**embed)
        self.embed.open()
        assert self.embed.encoder is not None
        mine = self.embed.encoder.identity()
        if mine != identity:
            raise RunError(
                f"worker {self.host}: model {embed['model']!r} is {mine} here but {identity} on "
                "the driver; install the same model (and searchpipe) on every node"
            )

    def __call__(self, batch: pa.Table) -> pa.Table:
        from searchpipe.arrow import file_batches

        out: dict[str, list[Any]] = {k: [] for k in ("shard", "rows", "sha256", "host", "pid")}
        for task in batch.to_pylist():
            source = Path(task["input"])
            got = sha256_file(source) if source.is_file() else "missing"
            if got != task["input_sha256"]:
                raise RunError(
                    f"worker {self.host}: input shard {source} has sha256 {got[:16]}, the driver "
                    f"wrote {task['input_sha256'][:16]}; is the work dir shared at the same path "
                    "on every node?"
                )
            embedded_batches = list(self.embed.process(file_batches(source)))
            schema = embedded_batches[0].schema
            path = Path(task["output"])
            digest = write_arrow(path, embedded_batches, schema)
            rows = sum(b.num_rows for b in embedded_batches)
            record = {
                "input_sha256": task["input_sha256"],
                "fingerprint": self.fingerprint,
                "rows": rows,
                "sha256": digest,
                "host": self.host,
                "pid": self.pid,
            }
            write_json(Path(task["record"]), record)
            for key, value in (
                ("shard", path.stem), ("rows", rows), ("sha256", digest),
                ("host", self.host), ("pid", self.pid),
            ):  # fmt: skip
                out[key].append(value)
        return pa.table(out)


class RayEmbedJob:
    """Embed a job's input shards on Ray, then stream the embedded passages in corpus order.

    >>> job = RayEmbedJob(work, EngineConfig(kind="ray"), embed)  # doctest: +SKIP
    >>> shards = write_inputs(passages, job.layout, 4096, fingerprint)  # doctest: +SKIP
    >>> for batch in job.run(shards): ...  # doctest: +SKIP
    """

    def __init__(self, work: Path, engine: EngineConfig, embed: Embed) -> None:
        assert embed.encoder is not None, "open the Embed stage first (its model's identity)"
        self.layout = ShardLayout(work)
        self.engine = engine
        self.embed = embed
        self.fingerprint = embed.fingerprint("")  # the model and its settings
        self.shards: list[Shard] = []
        self.reused = 0
        self.workers = 0
        self.seconds = 0.0

    def run(self, shards: list[Shard]) -> Iterator[pa.RecordBatch]:
        """Embed the shards not yet embedded, then yield every shard's rows in order."""
        self.shards = shards
        missing = [s for s in shards if not embedded(self.layout, s, self.fingerprint)]
        self.reused = len(shards) - len(missing)
        if self.reused:
            log.info(
                "ray: %d of %d shard(s) already embedded, reusing them", self.reused, len(shards)
            )
        t0 = time.perf_counter()
        reason = ""
        for attempt in range(1, self.engine.attempts + 1):
            if not missing:
                break
            try:
                self._embed(missing)
                reason = "finished without writing them"
            except Exception as e:  # a killed worker, a lost node, a model that fails
                reason = _first_line(e)
            missing = [s for s in shards if not embedded(self.layout, s, self.fingerprint)]
            if missing and attempt < self.engine.attempts:
                log.warning(
                    "ray: attempt %d failed (%s); %d shard(s) still to embed, retrying",
                    attempt, reason, len(missing),
                )  # fmt: skip
        if missing:
            raise RunError(
                f"ray: {len(missing)} of {len(shards)} shard(s) not embedded after "
                f"{self.engine.attempts} attempt(s) ({reason}); run the same command again to "
                "resume from the completed shards"
            )
        self.seconds = time.perf_counter() - t0
        yield from read_embedded(self.layout, shards)

    def _embed(self, shards: list[Shard]) -> None:
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
                "input": str(self.layout.input_path(s).resolve()),
                "input_sha256": s.sha256,
                "output": str(self.layout.embed_path(s).resolve()),
                "record": str(self.layout.record_path(s).resolve()),
            }
            for s in shards
        ]
        assert self.embed.encoder is not None
        settings = {
            "model": self.embed.model_name,
            "fields": self.embed.fields,
            # resolved here ("auto" is bf16 only where the CPU has it): every node embeds
            # in the driver's precision, or the shards would not be the local build's
            "precision": self.embed.encoder.precision,
            "token_budget": self.embed.token_budget,
            "batch_size": self.embed.batch_size,
            "max_length": self.embed.max_length,
        }
        log.info("ray: embedding %d shard(s) on %d worker(s) of %d CPU(s)", len(shards), pool, cpus)
        results = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
            EmbedShards,
            batch_size=1,
            batch_format="pyarrow",
            fn_constructor_kwargs={
                "embed": settings,
                "identity": self.embed.encoder.identity(),
                "threads": cpus,
                "fingerprint": self.fingerprint,
            },
            num_cpus=cpus,
            compute=ray.data.ActorPoolStrategy(size=pool),
        )
        for _ in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            pass  # each shard's record is on disk already; this only drives the execution

    def summary(self) -> dict[str, Any]:
        """What the index manifest records of the job: the engine and the shard list."""
        return {
            "kind": "ray",
            "address": self.engine.address or "local",
            "workers": self.workers,
            "cpus_per_worker": self.engine.cpus_per_worker,
            "work_dir": str(self.layout.work.resolve()),
            "shard_rows": self.engine.shard_rows,  # None: one shard per ingest batch
            "reused_shards": self.reused,
            "embed_seconds": round(self.seconds, 2),
            "shards": [
                {
                    "name": s.name,
                    "first_row": s.first_row,
                    "rows": s.rows,
                    "input_sha256": s.sha256,
                    "sha256": read_json(self.layout.record_path(s)).get("sha256"),
                }
                for s in self.shards
            ],
        }


class RecordEngine:
    """A build hook: the manifest's ``engine`` section, written after the job has run."""

    def __init__(self, job: RayEmbedJob) -> None:
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
