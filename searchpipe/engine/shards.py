"""Shards of a scale-out job: Arrow files written whole or not at all, each with a record of
its rows and sha256, checked before it is trusted. This module owns the layout of a job's
work folder (seen at the same path by the driver and every worker):

    input/part-00000.arrow   passages as the driver read, validated and chunked them, plus
                             SOURCE_ROW (their position in the corpus)
    input/_shards.json       {"fingerprint", "shards": [{"name", "rows", "first_row", "sha256"}]}
    embed/part-00000.arrow   the same rows with EMBEDDING and TOKENS added (by a worker)
    embed/part-00000.json    {"input_sha256", "input_rows", "fingerprint", "rows", "sha256",
                             "host", "pid"}

A batch search on Ray (``searchpipe search --engine ray``) has the same layout with queries as
its input and ``search/`` for its output: each query shard's hits.

An output shard is reused only when its record says it was made from the current input
shard's bytes with the current settings and its own bytes still match its sha256.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from searchpipe import columns as C
from searchpipe.arrow import append_column, file_batches
from searchpipe.errors import RunError
from searchpipe.files import sha256_file

log = logging.getLogger(__name__)
SHARDS = "_shards.json"


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

    def __init__(self, work: Path, output: str = "embed") -> None:
        self.work = work
        self.input_dir = work / "input"
        self.output_dir = work / output

    def input_path(self, shard: Shard) -> Path:
        return self.input_dir / f"{shard.name}.arrow"

    def output_path(self, shard: Shard) -> Path:
        return self.output_dir / f"{shard.name}.arrow"

    def record_path(self, shard: Shard) -> Path:
        return self.output_dir / f"{shard.name}.json"


def write_arrow(path: Path, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> str:
    """Write an Arrow IPC file whole or not at all; returns its sha256.

    The temporary name is unique, so a retried worker and a stray one never write one file.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with ipc.new_file(str(tmp), schema) as w:
            for batch in batches:
                w.write_batch(batch)
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON record whole or not at all."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON record, or {} when missing or cut short."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


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
    layout.input_dir.mkdir(parents=True, exist_ok=True)
    layout.output_dir.mkdir(parents=True, exist_ok=True)
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
        digest = write_arrow(layout.input_path(shard), [batch], batch.schema)
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
    for path in layout.input_dir.glob("part-*.arrow"):  # a longer corpus of an earlier run
        if int(path.stem.split("-")[1]) >= len(shards):
            path.unlink()
    write_json(
        layout.input_dir / SHARDS,
        {"fingerprint": fingerprint, "shards": [asdict(s) for s in shards]},
    )
    return shards


def done(layout: ShardLayout, shard: Shard, fingerprint: str) -> bool:
    """Whether ``shard``'s output shard is complete and sound for these inputs and settings.

    A shard whose bytes fail its recorded sha256 is logged and never trusted.
    """
    record = read_json(layout.record_path(shard))
    path = layout.output_path(shard)
    if not record or not path.is_file():
        return False
    if record.get("input_sha256") != shard.sha256 or record.get("fingerprint") != fingerprint:
        return False  # made from other inputs or settings: made again
    got = sha256_file(path)
    if got != record.get("sha256") or record.get("input_rows") != shard.rows:
        log.warning(
            "%s fails its checksum (sha256 %s, recorded %s); making that shard again",
            path, got[:16], str(record.get("sha256"))[:16],
        )  # fmt: skip
        return False
    return True


def read_outputs(
    layout: ShardLayout, shards: list[Shard], *, row_per_input: bool = True
) -> Iterator[pa.RecordBatch]:
    """The output shards' rows in input order, shard by shard (memory-mapped, one at a time),
    each shard's bytes checked against its record. With ``row_per_input`` (embedding: one
    output row per input row) each row's SOURCE_ROW is checked against its place too."""
    for shard in shards:
        path = layout.output_path(shard)
        record = read_json(layout.record_path(shard))
        got = sha256_file(path) if path.is_file() else "missing"
        if got != record.get("sha256"):
            raise RunError(
                f"{path} changed after it was checked (sha256 {got[:16]}, recorded "
                f"{str(record.get('sha256'))[:16]}); run the job again to make it again"
            )
        if not row_per_input:
            yield from file_batches(path)
            continue
        expected = shard.first_row
        for batch in file_batches(path):
            rows = batch.column(C.SOURCE_ROW).to_numpy()
            if not np.array_equal(rows, np.arange(expected, expected + len(rows))):
                raise RunError(
                    f"{path} holds rows {rows[:1].tolist()}… where rows from {expected} belong; "
                    "delete it and run the job again"
                )
            expected += len(rows)
            yield batch
        if expected != shard.first_row + shard.rows:
            raise RunError(
                f"{path} holds {expected - shard.first_row} rows, its input {shard.rows}; delete "
                "it and run the job again"
            )
