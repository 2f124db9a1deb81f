"""Shards of a scale-out job: Arrow files written whole or not at all, each with a record of
its rows and sha256, checked before it is trusted. This module owns the layout of a job's
work folder, seen by the driver and every worker at the same place: a local path (NFS on a
cluster) or any filesystem pyarrow opens by URI (``s3://bucket/prefix``, ``gs://...``,
``hdfs://...``; credentials from the usual environment, e.g. ``AWS_ACCESS_KEY_ID``, and
options in the URI, e.g. ``?region=eu-west-1&endpoint_override=host:9000&scheme=http``):

    input/part-00000.arrow   passages as the driver read, validated and chunked them, plus
                             SOURCE_ROW (their position in the corpus)
    input/_shards.json       {"fingerprint", "shards": [{"name", "rows", "first_row", "sha256"}]}
    embed/part-00000.arrow   the same rows with EMBEDDING and TOKENS added (by a worker)
    embed/part-00000.json    {"input_sha256", "input_rows", "fingerprint", "rows", "sha256",
                             "host", "pid"}

A batch search on Ray (``searchpipe search --engine ray``) has the same layout with queries as
its input and ``search/`` for its output: each query shard's hits.

An output shard is reused only when its record says it was made from the current input
shard's bytes with the current settings and its own bytes still match its sha256. Every file
is written under a temporary name and moved into place: a rename on a local filesystem; on
an object store a server-side copy, whose target appears whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from searchpipe import columns as C
from searchpipe.arrow import append_column, file_batches
from searchpipe.errors import InputError, RunError
from searchpipe.files import BLOCK, sha256_file

log = logging.getLogger(__name__)
SHARDS = "_shards.json"


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` names a filesystem by URI (``s3://…``) rather than a local path.

    >>> is_uri("s3://bucket/work"), is_uri("/mnt/nfs/work"), is_uri(Path("runs"))
    (True, False, False)
    """
    return isinstance(location, str) and "://" in location and not location.startswith("file:")


def join(base: str | Path, *parts: str) -> str:
    """``base``/``parts``, keeping a URI's options (``?…``) at the end.

    >>> join("s3://b/work?region=x", "index-a", "ray")
    's3://b/work/index-a/ray?region=x'
    """
    head, sep, query = str(base).partition("?") if is_uri(base) else (str(base), "", "")
    return "/".join([head.rstrip("/"), *parts]) + sep + query


class WorkDir:
    """A job's work folder and the few operations shards need on it, over a pyarrow
    filesystem: local paths are resolved (every worker gets the absolute path), a URI is
    opened with ``pyarrow.fs.FileSystem.from_uri``."""

    def __init__(self, location: str | Path) -> None:
        if is_uri(location):
            text = str(location)
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(text)
            except (pa.ArrowException, ValueError) as e:
                raise InputError(
                    f"--work-dir {text}: pyarrow cannot open it ({str(e).splitlines()[0]}); "
                    "use a local or NFS path, or s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, "
                    "hdfs://HOST/PATH"
                ) from None
            self.uri = text
            self.scheme = text.split("://", 1)[0]
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(location).resolve())
            self.uri, self.scheme = self.root, ""
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def show(self, path: str) -> str:
        """``path`` as a user would name it (with its scheme)."""
        return f"{self.scheme}://{path}" if self.scheme else path

    def makedirs(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def is_file(self, path: str) -> bool:
        return bool(self.fs.get_file_info(path).type == pafs.FileType.File)

    def files(self, folder: str) -> list[str]:
        """The names of the files directly in ``folder`` (none when it is missing)."""
        selector = pafs.FileSelector(folder, allow_not_found=True)
        return [
            i.base_name for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File
        ]

    def delete(self, path: str) -> None:
        self.fs.delete_file(path)

    def sha256(self, path: str) -> str:
        """Hex sha256 of a file's bytes, read in blocks; "missing" when there is none."""
        if not self.is_file(path):
            return "missing"
        if self.local:
            return sha256_file(path)
        digest = hashlib.sha256()
        with self.fs.open_input_stream(path) as f:
            while block := f.read(BLOCK):
                digest.update(block)
        return digest.hexdigest()

    def batches(self, path: str) -> Iterator[pa.RecordBatch]:
        """The record batches of an Arrow IPC file, one at a time (memory-mapped locally)."""
        if self.local:
            yield from file_batches(path)
            return
        with self.fs.open_input_file(path) as source:
            reader = ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)

    def _tmp(self, path: str) -> str:
        # unique, so a retried worker and a stray one never write one file
        folder, _, name = path.rpartition("/")
        return f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"

    def _place(self, tmp: str, path: str) -> None:
        try:
            self.fs.move(tmp, path)
        finally:
            if self.is_file(tmp):
                self.fs.delete_file(tmp)

    def write_arrow(self, path: str, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> str:
        """Write an Arrow IPC file whole or not at all; returns its sha256."""
        tmp = self._tmp(path)
        try:
            with self.fs.open_output_stream(tmp) as sink, ipc.new_file(sink, schema) as w:
                for batch in batches:
                    w.write_batch(batch)
            digest = self.sha256(tmp)
        except BaseException:
            if self.is_file(tmp):
                self.fs.delete_file(tmp)
            raise
        self._place(tmp, path)
        return digest

    def write_json(self, path: str, record: dict[str, Any]) -> None:
        """Write a JSON record whole or not at all."""
        tmp = self._tmp(path)
        with self.fs.open_output_stream(tmp) as sink:
            sink.write(json.dumps(record, indent=1).encode())
        self._place(tmp, path)

    def read_json(self, path: str) -> dict[str, Any]:
        """A JSON record, or {} when missing or cut short."""
        try:
            with self.fs.open_input_stream(path) as f:
                record = json.loads(f.read())
        except (OSError, ValueError, pa.ArrowException):
            return {}
        return record if isinstance(record, dict) else {}


@dataclass(frozen=True)
class Shard:
    """One input shard: rows ``first_row`` .. ``first_row + rows - 1`` of the corpus stream."""

    n: int
    rows: int
    first_row: int
    sha256: str

    @property
    def name(self) -> str:
        return f"part-{self.n:05d}"


class ShardLayout:
    """Paths of a scale-out job's shards under ``work`` (the only place that spells them);
    ``output`` names the folder of what the workers make (``embed``, ``search``)."""

    def __init__(self, work: str | Path, output: str = "embed") -> None:
        self.dir = WorkDir(work)
        self.output = output
        self.input_dir = self.dir.path("input")
        self.output_dir = self.dir.path(output)

    def input_path(self, name: str) -> str:
        return f"{self.input_dir}/{name}.arrow"

    def output_path(self, name: str) -> str:
        return f"{self.output_dir}/{name}.arrow"

    def record_path(self, name: str) -> str:
        return f"{self.output_dir}/{name}.json"


def write_inputs(
    passages: Iterable[pa.RecordBatch],
    layout: ShardLayout,
    shard_rows: int | None,
    fingerprint: str,
) -> list[Shard]:
    """Cut the driver's passage stream into input shards of ``shard_rows`` rows (None: one
    shard per batch of the stream), each row tagged with its SOURCE_ROW. Memory holds one
    shard. Rewritten on every run: the stream is deterministic, so an unchanged corpus gives
    byte-identical shards (and their embeddings are reused).

    One shard per batch is the default because a vector in bf16 depends on the other texts
    of its forward pass: embedding the very batches a local build embeds gives its vectors
    bit for bit."""
    work = layout.dir
    work.makedirs(layout.input_dir)
    work.makedirs(layout.output_dir)
    shards: list[Shard] = []
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    first_row = 0

    def flush(rows: int) -> None:
        nonlocal pending, pending_rows, first_row
        table = pa.Table.from_batches(pending).combine_chunks()
        head, rest = table.slice(0, rows), table.slice(rows)
        batch = head.combine_chunks().to_batches()[0]  # (rows > 0)
        positions = pa.array(np.arange(first_row, first_row + rows, dtype=np.int64))
        batch = append_column(batch, C.SOURCE_ROW, positions)
        shard = Shard(len(shards), rows, first_row, "")
        digest = work.write_arrow(layout.input_path(shard.name), [batch], batch.schema)
        shards.append(Shard(shard.n, rows, first_row, digest))
        first_row += rows
        pending = rest.to_batches() if rest.num_rows else []
        pending_rows = rest.num_rows

    for batch in passages:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows and pending_rows >= (shard_rows or pending_rows):
            flush(shard_rows or pending_rows)
    if pending_rows:
        flush(pending_rows)
    for name in work.files(layout.input_dir):  # a longer corpus of an earlier run
        if name.startswith("part-") and name.endswith(".arrow"):
            if int(name[len("part-") : -len(".arrow")]) >= len(shards):
                work.delete(f"{layout.input_dir}/{name}")
    work.write_json(
        f"{layout.input_dir}/{SHARDS}",
        {"fingerprint": fingerprint, "shards": [asdict(s) for s in shards]},
    )
    return shards


def done(layout: ShardLayout, shard: Shard, fingerprint: str) -> bool:
    """Whether ``shard``'s output shard is complete and sound for these inputs and settings.

    A shard whose bytes fail its recorded sha256 is logged and never trusted.
    """
    work = layout.dir
    record = work.read_json(layout.record_path(shard.name))
    path = layout.output_path(shard.name)
    if not record or not work.is_file(path):
        return False
    if record.get("input_sha256") != shard.sha256 or record.get("fingerprint") != fingerprint:
        return False  # made from other inputs or settings: made again
    got = work.sha256(path)
    if got != record.get("sha256") or record.get("input_rows") != shard.rows:
        log.warning(
            "%s fails its checksum (sha256 %s, recorded %s); making that shard again",
            work.show(path), got[:16], str(record.get("sha256"))[:16],
        )  # fmt: skip
        return False
    return True


def read_outputs(
    layout: ShardLayout, shards: list[Shard], *, row_per_input: bool = True
) -> Iterator[pa.RecordBatch]:
    """The output shards' rows in input order, shard by shard (one at a time; memory-mapped
    locally), each shard's bytes checked against its record. With ``row_per_input``
    (embedding: one output row per input row) each row's SOURCE_ROW is checked against its
    place too."""
    work = layout.dir
    for shard in shards:
        path = layout.output_path(shard.name)
        shown = work.show(path)
        record = work.read_json(layout.record_path(shard.name))
        got = work.sha256(path)
        if got != record.get("sha256"):
            raise RunError(
                f"{shown} changed after it was checked (sha256 {got[:16]}, recorded "
                f"{str(record.get('sha256'))[:16]}); run the job again to make it again"
            )
        if not row_per_input:
            yield from work.batches(path)
            continue
        expected = shard.first_row
        for batch in work.batches(path):
            rows = batch.column(C.SOURCE_ROW).to_numpy()
            if not np.array_equal(rows, np.arange(expected, expected + len(rows))):
                raise RunError(
                    f"{shown} holds rows {rows[:1].tolist()}… where rows from {expected} "
                    "belong; delete it and run the job again"
                )
            expected += len(rows)
            yield batch
        if expected != shard.first_row + shard.rows:
            raise RunError(
                f"{shown} holds {expected - shard.first_row} rows, its input {shard.rows}; "
                "delete it and run the job again"
            )
