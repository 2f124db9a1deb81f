"""The Ray engine against the local one: a real two-node Ray cluster on this machine (one CPU
per node), the sample corpus indexed on it, compared row by row with the local index; a
worker killed mid-job, a driver killed mid-job and a damaged shard all end at the same index.

No Ray is mocked. If Ray cannot start here the tests fail and say why.

The tests cut the 300 documents into shards of 10 rows (the default, one shard per ingest
batch of 1,024 documents, would be one shard), so both engines embed in fp32: in bf16 (the
default on a CPU with AMX) a vector depends on the other texts of its forward pass (padding,
kernel blocking) by ~1e-3, more than the 1e-4 the engines must agree to; fp32 makes that
~1e-6, so any real difference (a row out of place, a stale shard) shows. With default shards
the bf16 vectors are the local ones bit for bit (benchmarks/scale_out.py checks that on
SciFact).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from searchpipe import columns as C
from searchpipe.config import EngineConfig
from searchpipe.engine.shards import Shard
from searchpipe.index.store import Index, check_index

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "searchpipe-test",
    "AWS_SECRET_ACCESS_KEY": "searchpipe-test",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """Two Ray nodes of one CPU each, started once per session, this process connected."""
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError as e:
        pytest.fail(f"Ray is not installed ({e}); `make install` installs searchpipe[ray]")
    # the nodes' environment carries credentials for the test's S3 server (s3_server), as a
    # real cluster's nodes carry theirs; the workers inherit it from the nodes started here
    for key, value in S3_ENV.items():
        os.environ.setdefault(key, value)
    try:
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
        )
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        cluster.wait_for_nodes()
    except Exception as e:  # the reason, not a skip: the default suite must test Ray
        pytest.fail(f"a local two-node Ray cluster could not start: {type(e).__name__}: {e}")
    assert ray.cluster_resources().get("CPU") == 2
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def local_fp32(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Index:
    """The oracle: the sample corpus indexed by the local engine, fp32."""
    from searchpipe.api import build_index

    root = tmp_path_factory.mktemp("local")
    work = EngineConfig(work_dir=root / "runs")
    return build_index(
        corpus=sample_corpus, name="sample", index_root=root, precision="fp32", engine=work
    )


def ray_engine(home: Path, **kw: Any) -> EngineConfig:
    return EngineConfig(kind="ray", workers=2, work_dir=home / "shared", **kw)


def assert_same_index(ray_index: Index, local: Index, encoder: Any, queries: Path) -> None:
    """Row by row the local index: doc ids and passages, vectors, top-10 of every query."""
    from searchpipe.api import Searcher
    from searchpipe.arrow import arrow_to_vectors
    from searchpipe.stages.ingest import read_queries

    for col in (C.DOC_ID, C.PASSAGE, C.TEXT):
        assert ray_index.docs.column(col).to_pylist() == local.docs.column(col).to_pylist()
    assert ray_index.vectors is not None and local.vectors is not None
    got = arrow_to_vectors(ray_index.vectors.column(C.EMBEDDING))
    want = arrow_to_vectors(local.vectors.column(C.EMBEDDING))
    np.testing.assert_allclose(got, want, atol=1e-4)
    table = read_queries(queries)
    for retriever in ("hybrid", "dense"):
        hits = [
            Searcher(index, encoder=encoder, retriever=retriever)
            .search_batch(table, k=10)
            .select(["query_id", "doc_id"])
            .to_pylist()
            for index in (ray_index, local)
        ]
        assert hits[0] == hits[1], f"{retriever} top-10 differ"
    check_index(ray_index.root)


def test_bad_input_fails_on_the_driver_as_locally(
    ray_cluster: Any, home: Path, tmp_path: Path
) -> None:
    """Reading and validation run on the driver: the same error (file, line) as a local run,
    and before any shard reaches Ray."""
    from searchpipe.api import build_index
    from searchpipe.errors import InputError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "fine"}\n{"_id": "b", "text": ""}\n')
    errors = []
    for engine in (EngineConfig(), ray_engine(home)):
        with pytest.raises(InputError) as err:
            build_index(corpus=bad, name="bad", progress=False, engine=engine)
        errors.append(str(err.value))
    assert errors[0] == errors[1] and f"{bad}:line 2" in errors[0]
    assert not list((home / "shared").rglob("embed/part-*.arrow"))


def records(home: Path) -> list[Path]:
    return sorted((home / "shared").rglob("embed/part-*.json"))


def test_ray_builds_the_local_index_through_a_killed_worker(
    ray_cluster: Any,
    home: Path,
    sample_corpus: Path,
    sample_queries: Path,
    local_fp32: Index,
    encoder: Any,
) -> None:
    """Index the sample on two Ray workers and SIGKILL one embedding actor once it has
    written its first shard: the job still completes (Ray restarts the actor; the driver
    retries what is missing) and builds the local index, row for row."""
    from click.testing import CliRunner

    from searchpipe.api import build_index
    from searchpipe.cli import main

    engine = ray_engine(home, shard_rows=10)  # 30 shards: the kill lands mid-job
    result: dict[str, Any] = {}

    def build() -> None:
        try:
            result["index"] = build_index(
                corpus=sample_corpus, name="sample", progress=False, precision="fp32", engine=engine
            )
        except BaseException as e:  # reported by the main thread
            result["error"] = e

    thread = threading.Thread(target=build)
    thread.start()
    deadline = time.monotonic() + 300
    while not records(home) and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.01)
    first = records(home)
    assert first, f"no shard was embedded: {result.get('error')!r}"
    victim = int(json.loads(first[0].read_text())["pid"])
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    thread.join(timeout=240)
    assert not thread.is_alive(), "the job did not finish after the worker was killed"
    assert "error" not in result, f"the job failed after a worker was killed: {result['error']!r}"
    after = [json.loads(r.read_text()) for r in records(home) if r.stat().st_mtime > killed_at]
    assert len(after) >= 5, "most shards should have been embedded after the kill"
    assert victim not in {r["pid"] for r in after}, "the killed actor wrote nothing afterwards"
    index = result["index"]
    assert_same_index(index, local_fp32, encoder, sample_queries)
    engine_record = index.manifest["engine"]
    assert engine_record["kind"] == "ray" and engine_record["workers"] == 2
    assert [s["rows"] for s in engine_record["shards"]] == [10] * 30
    assert all(len(s["sha256"]) == 64 for s in engine_record["shards"])
    out = CliRunner().invoke(main, ["info", "sample"])
    assert out.exit_code == 0, out.output
    assert "engine     ray, 2 worker(s)" in out.output and "part-00009 10 rows" in out.output
    assert "20 more" in out.output


def test_a_killed_driver_resumes_from_completed_shards(
    ray_cluster: Any,
    home: Path,
    sample_corpus: Path,
    sample_queries: Path,
    local_fp32: Index,
    encoder: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`searchpipe index --engine ray` SIGKILLed after some shards, and a byte flipped in one
    of the shards it completed; run again, it names the damaged shard, embeds it and the
    shards still missing, reuses the rest, and builds the local index."""
    from searchpipe.api import build_index

    work = home / "shared"
    cmd = [
        sys.executable, "-m", "searchpipe", "index", str(sample_corpus), "--name", "sample",
        "--precision", "fp32", "--engine", "ray", "--ray-address", ray_cluster.address,
        "--workers", "2", "--shard-rows", "10", "--work-dir", str(work),
    ]  # fmt: skip
    env = {**os.environ, "SEARCHPIPE_HOME": str(home)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # a contended 2-core machine can take minutes
    while len(records(home)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(records(home)) >= 3, "the driver embedded fewer than 3 shards in 300 s"
    assert proc.poll() is None, f"the driver ended early: {proc.communicate()[1].decode()[-2000:]}"
    proc.kill()
    proc.wait()
    done = len(records(home))
    assert 3 <= done < 30 and not (home / "indexes" / "sample" / "manifest.json").exists()
    shard = records(home)[1].with_suffix(".arrow")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with caplog.at_level("INFO", logger="searchpipe"):
        index = build_index(
            corpus=sample_corpus,
            name="sample",
            progress=False,
            precision="fp32",
            engine=ray_engine(home, shard_rows=10),
        )
    reused = index.manifest["engine"]["reused_shards"]
    assert f"{shard} fails its checksum" in caplog.text
    assert reused >= done - 1 and f"{reused} of 30 shard(s) already embedded" in caplog.text
    assert_same_index(index, local_fp32, encoder, sample_queries)


def test_ray_search_writes_the_local_run_and_resumes(
    ray_cluster: Any,
    home: Path,
    sample_queries: Path,
    local_fp32: Index,
    cross_encoder_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`searchpipe search --engine ray` (query shards of 3 on two workers, reranked in fp32)
    writes the local search's run hit for hit, with the reranker's pairs summed over the
    shards; run again, it reuses every shard; a byte flipped in one shard's hits is named,
    that shard searched again, and the run is the same."""
    import json

    import pyarrow.ipc as ipc
    from click.testing import CliRunner

    from searchpipe.api import search
    from searchpipe.cli import main

    root = local_fp32.root.parent
    flags = {"precision": "fp32", "rerank": str(cross_encoder_dir), "rerank_depth": 10, "k": 10}
    want = search(
        index="sample", queries=sample_queries, output=tmp_path / "local.arrow",
        index_root=root, **flags,
    )  # fmt: skip
    work = home / "shared"
    cmd = [
        "search", "sample", "--queries", str(sample_queries), "--output", str(tmp_path / "ray.arrow"),
        "--index-dir", str(root), "--precision", "fp32", "--rerank", str(cross_encoder_dir),
        "--rerank-depth", "10", "-k", "10", "--engine", "ray", "--workers", "2",
        "--shard-rows", "3", "--work-dir", str(work), "--json",
    ]  # fmt: skip

    def run() -> dict[str, Any]:
        out = CliRunner().invoke(main, cmd)
        assert out.exit_code == 0, out.output
        return dict(json.loads(out.stdout))

    def hits(name: str) -> Any:
        return ipc.open_file(str(tmp_path / name)).read_all()

    def assert_same_run() -> None:
        got, local = hits("ray.arrow"), hits("local.arrow")
        assert got.schema.names == local.schema.names
        key = ["query_id", "doc_id", "rank"]
        assert got.select(key).to_pylist() == local.select(key).to_pylist()
        for col in ("score", "rerank_score"):
            np.testing.assert_allclose(
                got.column(col).to_numpy(), local.column(col).to_numpy(), atol=1e-4
            )

    first = run()
    assert_same_run()
    assert first["queries"] == want["queries"] == 12 and first["rows"] == want["rows"] == 120
    assert first["reranked_pairs"] == want["reranked_pairs"] == 120
    assert first["engine"]["shards"] == 4 and first["engine"]["reused_shards"] == 0
    assert first["engine"]["workers"] == 2
    shards = sorted(work.rglob("search/part-*.arrow"))
    assert len(shards) == 4
    assert run()["engine"]["reused_shards"] == 4
    data = bytearray(shards[2].read_bytes())
    data[len(data) // 2] ^= 0x01
    shards[2].write_bytes(bytes(data))
    with caplog.at_level("INFO", logger="searchpipe"):
        again = run()
    assert f"{shards[2]} fails its checksum" in caplog.text
    assert again["engine"]["reused_shards"] == 3 and again["reranked_pairs"] == 120
    assert_same_run()


def test_engine_settings_in_yaml(tmp_path: Path) -> None:
    """A job file's engine: section is the EngineConfig the CLI and API take; unknown keys
    and an engine: without an index: or search: are errors naming the file."""
    from searchpipe.api import run_job
    from searchpipe.config import JobConfig, load_config
    from searchpipe.errors import InputError

    job = tmp_path / "job.yaml"
    job.write_text(
        "index: {name: s, corpus: corpus.jsonl}\n"
        "engine: {kind: ray, address: auto, workers: 2, work_dir: shared}\n"
    )
    cfg = load_config(job, JobConfig)
    assert cfg.engine == EngineConfig(
        kind="ray", address="auto", workers=2, work_dir=tmp_path / "shared"
    )
    job.write_text("index: {name: s, corpus: c.jsonl}\nengine: {kind: ray, nodes: 2}\n")
    with pytest.raises(InputError, match=r"unknown key 'engine.nodes'.*cpus_per_worker"):
        load_config(job, JobConfig)
    job.write_text("engine: {kind: ray}\npipeline: [{read: {path: q.jsonl}}]\n")
    with pytest.raises(InputError, match="'engine:' says where an 'index:' section is built"):
        run_job(job)


def test_input_shards_one_per_batch_or_of_shard_rows(tmp_path: Path) -> None:
    """By default a shard is one batch of the driver's stream (the batches a local build
    embeds); with shard_rows, shards of that many rows; every row keeps its source_row."""
    import pyarrow as pa

    from searchpipe.arrow import file_batches
    from searchpipe.engine.shards import ShardLayout, write_inputs

    batches = [pa.record_batch({C.DOC_ID: [f"d{i}" for i in range(a, b)]}) for a, b in
               [(0, 5), (5, 6), (6, 13)]]  # fmt: skip
    for shard_rows, sizes in ((None, [5, 1, 7]), (4, [4, 4, 4, 1])):
        layout = ShardLayout(tmp_path / str(shard_rows))
        shards = write_inputs(batches, layout, shard_rows, "fp")
        assert [s.rows for s in shards] == sizes
        rows = [
            r
            for s in shards
            for b in file_batches(layout.input_path(s.name))
            for r in b.select([C.DOC_ID, C.SOURCE_ROW]).to_pylist()
        ]
        assert rows == [{C.DOC_ID: f"d{i}", C.SOURCE_ROW: i} for i in range(13)]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A local S3 server (moto's) in this process, with a bucket "work": its host:port."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    fs = pafs.S3FileSystem(
        access_key=S3_ENV["AWS_ACCESS_KEY_ID"], secret_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        endpoint_override=endpoint, scheme="http", region="us-east-1",
        allow_bucket_creation=True,
    )  # fmt: skip
    fs.create_dir("work")
    yield endpoint
    server.stop()


def test_ray_work_dir_on_s3(
    ray_cluster: Any,
    home: Path,
    sample_corpus: Path,
    sample_queries: Path,
    local_fp32: Index,
    encoder: Any,
    s3_server: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """--work-dir s3://…: the driver and both workers write and read the shards in a bucket
    through pyarrow's S3 filesystem (a real S3 protocol server, moto's); the index is the
    local one; the bucket holds each shard and its record and no temporary object; a byte
    flipped in one shard there fails its checksum, named by its URI."""
    import pyarrow.fs as pafs

    from searchpipe.api import build_index
    from searchpipe.engine.shards import ShardLayout, done

    options = f"endpoint_override={s3_server}&scheme=http&region=us-east-1"
    uri = f"s3://work/jobs?{options}"
    engine = EngineConfig(kind="ray", workers=2, work_dir=uri, shard_rows=50)
    index = build_index(
        corpus=sample_corpus, name="sample", progress=False, precision="fp32", engine=engine
    )
    assert_same_index(index, local_fp32, encoder, sample_queries)
    record = index.manifest["engine"]
    assert record["work_dir"] == f"s3://work/jobs/index-sample/ray?{options}"
    assert [s["rows"] for s in record["shards"]] == [50] * 6
    fs, root = pafs.FileSystem.from_uri(record["work_dir"])
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{root}/embed")))
    assert names == sorted(f"part-{n:05d}.{ext}" for n in range(6) for ext in ("arrow", "json"))
    assert not (home / "runs").exists() or not list((home / "runs").rglob("*.arrow"))

    layout = ShardLayout(record["work_dir"])
    shards = [Shard(n, 50, 50 * n, s["input_sha256"]) for n, s in enumerate(record["shards"])]
    fingerprint = layout.dir.read_json(layout.record_path("part-00000"))["fingerprint"]
    assert all(done(layout, s, fingerprint) for s in shards)
    path = layout.output_path("part-00002")
    with fs.open_input_stream(path) as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0x01
    with fs.open_output_stream(path) as f:
        f.write(bytes(data))
    with caplog.at_level("WARNING", logger="searchpipe"):
        assert not done(layout, shards[2], fingerprint)
    assert f"s3://{path} fails its checksum" in caplog.text
    assert all(done(layout, s, fingerprint) for s in shards if s.n != 2)


def test_work_dir_uri_errors(home: Path, sample_corpus: Path) -> None:
    """A URI work dir with the local engine, and one pyarrow cannot open: exit 2, saying why."""
    from click.testing import CliRunner

    from searchpipe.cli import main

    args = ["index", str(sample_corpus), "--name", "s"]
    out = CliRunner().invoke(main, [*args, "--work-dir", "s3://bucket/work"])
    assert out.exit_code == 2, out.output
    assert "only --engine ray keeps its shards on object storage" in out.output
    out = CliRunner().invoke(main, [*args, "--engine", "ray", "--work-dir", "nosuchfs://x/y"])
    assert out.exit_code == 2, out.output
    assert "--work-dir nosuchfs://x/y/index-s/ray: pyarrow cannot open it" in out.output
    assert "Traceback" not in out.output and not (home / "indexes" / "s").exists()
