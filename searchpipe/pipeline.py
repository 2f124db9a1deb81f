"""Compose stages, check their columns up front, and run them in memory or as a batch job.

In memory, a pipeline chains the stages' generators: batches flow through without being
stored. As a batch job (``run_job``), each stage's output is written as Arrow IPC shards in a
run folder (``NN-stage/part-00000.arrow`` ...), one shard per input batch, each renamed into
place when complete. A stage whose fingerprint (its settings plus everything upstream) is
unchanged is skipped and its shards are read back; a stage killed half way resumes after its
last complete shard. Every shard's sha256 is recorded as it is written (``_job.json``, then
``_done.json``) and checked before the shard is reused: a damaged shard is never read into a
new result; the stage is computed again from that shard on, with a log line naming it.
Read a stage's output with ``pyarrow.dataset.dataset(folder, format="ipc")``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from searchpipe.arrow import file_batches
from searchpipe.errors import InputError
from searchpipe.files import sha256_file
from searchpipe.stages.base import Source, Stage
from searchpipe.stages.registry import providers

log = logging.getLogger(__name__)
DONE = "_done.json"
DIGESTS = "_parts.sha256"  # a running stage's shard checksums, one line each


def runs_dir() -> Path:
    home = os.environ.get("SEARCHPIPE_HOME")
    return Path(home) / "runs" if home else Path("runs")


class Pipeline:
    """A sequence of stages over one record-batch stream.

    >>> p = Pipeline([Ingest("corpus.jsonl"), Embed("minilm")])  # doctest: +SKIP
    >>> p.check()  # raises InputError naming any missing column  # doctest: +SKIP
    >>> for batch in p.stream(): ...  # doctest: +SKIP
    """

    def __init__(self, stages: list[Stage]) -> None:
        if not stages:
            raise InputError("a pipeline needs at least one stage")
        self.stages = list(stages)

    def check(self, columns: Iterable[str] = ()) -> set[str]:
        """Check that every stage will find its columns; return the final column set."""
        available = set(columns)
        for i, stage in enumerate(self.stages):
            if isinstance(stage, Source) and i > 0:
                raise InputError(f"stage {i + 1} ({stage.name}) reads a file and must come first")
            missing = [c for c in stage.requires if c not in available]
            if missing:
                have = ", ".join(sorted(available)) or "none"
                hints = "; ".join(
                    f"{c} comes from {' or '.join(found)}"
                    for c in missing
                    if (found := providers(c))
                )
                raise InputError(
                    f"stage {i + 1} ({stage.name}) needs column(s) {', '.join(missing)}, which no earlier "
                    f"stage provides (available: {have}); add a stage that provides them"
                    + (f" ({hints})" if hints else "")
                )
            available = stage.output_columns(available)
        return available

    def open(self) -> None:
        for stage in self.stages:
            stage.open()

    def stream(
        self,
        batches: pa.Table | Iterable[pa.RecordBatch] | None = None,
        columns: Iterable[str] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Run the stages in memory over ``batches`` (or over the source stage's output).

        The columns of the input are taken from a table or a list of batches; for any other
        iterable, name them in ``columns`` so the pipeline can be checked before it runs.
        """
        if isinstance(batches, pa.Table):
            columns, batches = batches.schema.names, batches.to_batches()
        elif columns is None and isinstance(batches, list) and batches:
            columns = batches[0].schema.names
        if batches is None and not isinstance(self.stages[0], Source):
            raise InputError("the pipeline has no source stage; pass input batches")
        self.check(columns or ())
        self.open()
        stream: Iterable[pa.RecordBatch] = batches if batches is not None else ()
        for stage in self.stages:
            stream = stage(stream)
        return iter(stream)

    def run(self, batches: Iterable[pa.RecordBatch] | None = None) -> pa.Table | None:
        """Run in memory and collect the final batches into a table (None if none)."""
        out = list(self.stream(batches))
        return pa.Table.from_batches(out) if out else None

    def run_job(self, work_dir: Path, progress: bool | None = None) -> Iterator[pa.RecordBatch]:
        """Run as a batch job in ``work_dir``, one stage at a time (see module docstring).

        Returns the stream of the last stage; a final sink stage (index build, write)
        runs as that stream is consumed.
        """
        self.check()
        work_dir.mkdir(parents=True, exist_ok=True)
        stream: Iterable[pa.RecordBatch] = ()
        rows: int | None = None
        fingerprint = ""
        for stage in self.stages:
            if isinstance(stage, Source):
                fingerprint = stage.fingerprint(stage.fingerprint_source())
            else:
                fingerprint = stage.fingerprint(fingerprint)
                stream = with_progress(stream, rows, stage.name, progress)
            if not stage.materialize:
                stream = stage(stream)
                continue
            folder = self.folder(work_dir, stage)
            rows = _complete(stage, stream, folder, fingerprint)
            stream = read_parts(folder)
        return iter(stream)

    def folder(self, work_dir: Path, stage: Stage) -> Path:
        """Where a batch job in ``work_dir`` keeps ``stage``'s shards (``NN-name``)."""
        return work_dir / f"{self.stages.index(stage) + 1:02d}-{stage.name}"

    def rows(self, work_dir: Path, stage: Stage) -> int | None:
        """Rows ``stage`` wrote in the batch job in ``work_dir`` (None until it completed)."""
        return stage_rows(self.folder(work_dir, stage))


def with_progress(
    stream: Iterable[pa.RecordBatch], total: int | None, desc: str, enabled: bool | None
) -> Iterator[pa.RecordBatch]:
    """Pass batches through, advancing a progress bar by rows (off when not a terminal)."""
    from tqdm import tqdm

    disable = None if enabled is None else not enabled  # None: on only for a terminal
    with tqdm(
        total=total, desc=desc, unit="row", disable=disable, file=sys.stderr, leave=False
    ) as bar:
        for batch in stream:
            bar.update(batch.num_rows)
            yield batch


def read_parts(folder: Path) -> Iterator[pa.RecordBatch]:
    for part in sorted(folder.glob("part-*.arrow")):
        yield from file_batches(part)


def _complete(
    stage: Stage, upstream: Iterable[pa.RecordBatch], folder: Path, fingerprint: str
) -> int:
    """Make ``folder`` hold the stage's complete output: reuse, resume or compute. Returns rows."""
    done = folder / DONE
    record = _read_record(done)
    job = folder / "_job.json"
    resumable = _read_record(job).get("fingerprint") == fingerprint and stage.batchwise
    damaged: int | None = None
    if record.get("fingerprint") == fingerprint and "rows" in record:
        digests = record.get("sha256")
        if not isinstance(digests, list) or len(digests) != record.get("parts"):
            # (written before shards had checksums): nothing to verify them by
            log.warning("%s: %s records no shard checksums; computing it again", stage.name, done)
            resumable = False
        elif (damaged := _first_damaged(stage, folder, digests)) is None:
            log.info("%s: inputs and settings unchanged, reusing %s", stage.name, folder)
            return int(record["rows"])
    digests = []
    if resumable:
        digests = _read_digests(folder)
        if damaged is None:
            damaged = _first_damaged(stage, folder, digests)
        digests = digests if damaged is None else digests[:damaged]
        log.info("%s: resuming after %d complete shard(s)", stage.name, len(digests))
    else:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        _write_record(job, {"stage": stage.name, "fingerprint": fingerprint})
    done.unlink(missing_ok=True)
    n = len(digests)
    for stale in [*folder.glob(".part-*"), *folder.glob("part-*.arrow")]:
        if stale.name.startswith(".") or int(stale.stem.split("-")[1]) >= n:
            stale.unlink()  # a shard written but not recorded (killed in between): redone
    # one line per shard, appended: O(shards) bytes however long the stage
    with open(folder / DIGESTS, "w") as log_file:
        log_file.writelines(f"{d}\n" for d in digests)
        for batch in stage(islice(upstream, n, None) if n else upstream):
            digests.append(_write_part(folder, n, batch))
            log_file.write(f"{digests[-1]}\n")
            log_file.flush()
            n += 1
    rows = sum(b.num_rows for b in read_parts(folder))
    _write_record(
        done,
        {
            "stage": stage.name,
            "fingerprint": fingerprint,
            "parts": n,
            "rows": rows,
            "sha256": digests,
        },
    )
    return rows


def _read_digests(folder: Path) -> list[str]:
    """The sha256 of each shard written so far, in order (a line cut short by a kill is dropped)."""
    try:
        lines = (folder / DIGESTS).read_text().split("\n")[:-1]  # the last is unterminated
    except OSError:
        return []
    return [line for line in lines if len(line) == 64]


def _first_damaged(stage: Stage, folder: Path, digests: list[str]) -> int | None:
    """The number of the first shard whose bytes do not match its recorded sha256 (logged)."""
    for i, want in enumerate(digests):
        part = folder / f"part-{i:05d}.arrow"
        got = sha256_file(part) if part.is_file() else "missing"
        if got != want:
            log.warning(
                "%s: %s fails its checksum (sha256 %s, recorded %s); computing the stage again "
                "from that shard on",
                stage.name, part, got[:16], str(want)[:16],
            )  # fmt: skip
            return i
    return None


def _read_record(path: Path) -> dict[str, Any]:
    """A stage record (_job.json/_done.json), or {} when missing or cut short by a kill."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a stage record whole or not at all (a kill mid-write leaves the old one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def _write_part(folder: Path, n: int, batch: pa.RecordBatch) -> str:
    """Write shard ``n`` whole or not at all; returns its sha256."""
    tmp = folder / f".part-{n:05d}.arrow"
    with ipc.new_file(str(tmp), batch.schema) as w:
        w.write_batch(batch)
    digest = sha256_file(tmp)
    os.replace(tmp, folder / f"part-{n:05d}.arrow")
    return digest


def stage_rows(folder: Path) -> int | None:
    """Row count recorded by a completed stage folder."""
    rows = _read_record(folder / DONE).get("rows")
    return int(rows) if rows is not None else None
