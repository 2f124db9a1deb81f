"""Pipeline: column checks before any model loads, no mutation, skip and resume of batch jobs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from searchpipe import columns as C
from searchpipe.arrow import append_column
from searchpipe.errors import InputError
from searchpipe.pipeline import Pipeline, read_parts
from searchpipe.stages.base import Stage
from searchpipe.stages.embed import Embed
from searchpipe.stages.ingest import Ingest
from searchpipe.stages.rerank import Rerank


class Upper(Stage):
    """A cheap batchwise stage that can be told to crash after n batches."""

    name = "upper"
    requires = (C.TEXT,)
    provides = ("upper",)
    calls = 0

    def __init__(self, crash_after: int | None = None) -> None:
        self.crash_after = crash_after

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for i, batch in enumerate(batches):
            if self.crash_after is not None and i == self.crash_after:
                raise KeyboardInterrupt("killed")
            Upper.calls += 1
            upper = pa.array([t.upper() for t in batch.column(C.TEXT).to_pylist()])
            yield append_column(batch, "upper", upper)


class ExplodingModel(Stage):
    name = "exploding"
    requires = ("no_such_column",)

    def open(self) -> None:  # pragma: no cover - must never run
        raise AssertionError("model loaded before the column check")


def test_missing_columns_are_named_before_any_model_loads(sample_corpus: Path) -> None:
    with pytest.raises(InputError) as err:
        Pipeline([Ingest(sample_corpus), ExplodingModel()]).check()
    assert "stage 2 (exploding) needs column(s) no_such_column" in str(err.value)
    assert "doc_id" in str(err.value)  # says what is available
    with pytest.raises(
        InputError, match=r"rerank\) needs column\(s\) query_id, query_text, doc_row"
    ):
        Pipeline([Ingest(sample_corpus), Embed("minilm"), Rerank("unused", index=None)]).check()  # type: ignore[arg-type]


def test_stages_do_not_mutate_their_input(sample_corpus: Path) -> None:
    batch = next(Ingest(sample_corpus).read())
    before = batch.schema.names[:]
    out = next(Upper()(iter([batch])))
    assert batch.schema.names == before and "upper" in out.schema.names


def sha(folder: Path) -> str:
    digest = hashlib.sha256()
    for part in sorted(folder.glob("part-*.arrow")):
        digest.update(part.read_bytes())
    return digest.hexdigest()


def test_batch_job_skips_unchanged_and_resumes_after_a_crash(
    tmp_path: Path, sample_corpus: Path
) -> None:
    def job(stage: Stage, work: Path) -> pa.Table:
        return pa.Table.from_batches(
            list(
                Pipeline([Ingest(sample_corpus, batch_rows=40), stage]).run_job(
                    work, progress=False
                )
            )
        )

    clean = job(Upper(), tmp_path / "clean")
    assert clean.num_rows == 300 and (tmp_path / "clean" / "02-upper" / "_done.json").exists()

    Upper.calls = 0
    job(Upper(), tmp_path / "clean")
    assert Upper.calls == 0, "an unchanged re-run recomputes nothing"

    with pytest.raises(KeyboardInterrupt):
        job(Upper(crash_after=3), tmp_path / "crashed")
    assert len(list((tmp_path / "crashed" / "02-upper").glob("part-*.arrow"))) == 3
    Upper.calls = 0
    resumed = job(Upper(), tmp_path / "crashed")
    assert Upper.calls == 8 - 3, "only the batches after the last complete shard run again"
    assert resumed.equals(clean)
    assert sha(tmp_path / "crashed" / "02-upper") == sha(tmp_path / "clean" / "02-upper")


def test_stage_outputs_are_inspectable_arrow(tmp_path: Path, sample_corpus: Path) -> None:
    list(Pipeline([Ingest(sample_corpus), Upper()]).run_job(tmp_path, progress=False))
    import pyarrow.dataset as ds

    table = ds.dataset(tmp_path / "01-ingest", format="ipc").to_table()
    assert table.num_rows == 300 and table.schema.names == ["doc_id", "title", "text", "metadata"]
    assert sum(b.num_rows for b in read_parts(tmp_path / "02-upper")) == 300


def test_in_memory_pipeline_over_a_table(sample_corpus: Path) -> None:
    table = pa.Table.from_batches(list(Ingest(sample_corpus).read()))
    out = Pipeline([Upper()]).run(table)
    assert (
        out is not None
        and out.column("upper")[0].as_py() == table.column("text")[0].as_py().upper()
    )


def test_a_damaged_cached_shard_is_recomputed_not_reused(
    home: Path, sample_corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A flipped byte in a cached embedding shard must not pass into a new index: the shard
    fails its recorded sha256, the stage is computed again (with a log line naming the shard),
    and the rebuilt index equals the clean one."""
    import shutil

    import numpy as np

    from searchpipe.api import build_index
    from searchpipe.arrow import arrow_to_vectors, file_batches

    clean = build_index(corpus=sample_corpus, name="sample", progress=False)
    clean_ids = clean.docs.column(C.DOC_ID).to_pylist()
    assert clean.vectors is not None
    clean_vectors = arrow_to_vectors(clean.vectors.column(C.EMBEDDING)).copy()
    parts = sorted((home / "runs" / "index-sample").glob("*-embed/part-*.arrow"))
    assert parts, "the batch job keeps its embedding shards"
    part = parts[0]
    before = arrow_to_vectors(next(file_batches(part)).column(C.EMBEDDING)).copy()
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the embedding column, the file's largest buffer
    part.write_bytes(bytes(data))
    after = arrow_to_vectors(next(file_batches(part)).column(C.EMBEDDING))
    assert not np.array_equal(before, after), "the flip must change a stored vector"

    shutil.rmtree(home / "indexes" / "sample")  # so the build runs again over the cache
    with caplog.at_level("INFO", logger="searchpipe"):
        rebuilt = build_index(corpus=sample_corpus, name="sample", progress=False)
    assert f"{part} fails its checksum" in caplog.text
    assert "embed: inputs and settings unchanged" not in caplog.text
    assert "ingest: inputs and settings unchanged" in caplog.text  # the sound stage is reused
    assert rebuilt.docs.column(C.DOC_ID).to_pylist() == clean_ids
    assert rebuilt.vectors is not None
    np.testing.assert_array_equal(
        arrow_to_vectors(rebuilt.vectors.column(C.EMBEDDING)), clean_vectors
    )
