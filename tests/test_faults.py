"""Faults: kill -9 during writes, flipped bytes, full disks, readers during rebuilds, killed jobs.

The counts each test reaches are printed (run with ``-s`` to see them); the larger counts run
with ``-m slow``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from fault_helpers.fakes import HashEncoder, build_fake, text_vectors, words_text, write_jsonl

from searchpipe.api.update import add_documents, delete_documents
from searchpipe.errors import SearchpipeError
from searchpipe.index.store import MANIFEST, Index, rows_to_doc_ids, verify

HELPERS = Path(__file__).parent / "fault_helpers"
ROOT = Path(__file__).resolve().parents[1]


def helper_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(Path(__file__).parent)])
    return env


def run_helper(script: str, *args: Any, timeout: float = 600) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(HELPERS / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=helper_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- kill -9 during writes


def crash_writes(tmp_path: Path, op: str, points: int) -> None:
    summary = run_helper("crash_server.py", tmp_path, op, points, 1)
    print(f"\nkill -9 during {op}: {summary}")
    tried = summary["crash_points_enumerated"] + summary["crash_points_random_delay"]
    assert summary["old"] + summary["new"] == tried  # every trial opened at old or new
    assert summary["unreadable"] == 0 and summary["old"] > 0


@pytest.mark.parametrize("op", ["build", "add", "delete"])
def test_kill_9_during_writes_leaves_old_or_new_version(tmp_path: Path, op: str) -> None:
    crash_writes(tmp_path, op, 12)  # 12 of the enumerated points + 6 random delays, per op


@pytest.mark.slow
@pytest.mark.parametrize("op", ["build", "add", "delete"])
def test_kill_9_during_writes_many_points(tmp_path: Path, op: str) -> None:
    crash_writes(tmp_path, op, 200)  # every enumerated point + random delays, 200 per op


# ---------------------------------------------------------------- flipped bytes


def check_group() -> Any:
    from searchpipe.cli import _Group
    from searchpipe.cli.index import COMMANDS

    return _Group(name="searchpipe", commands={c.name: c for c in COMMANDS})


def flip_all(
    root: Path, positions: list[tuple[Path, int]], seed: int = 0, open_too: bool = True
) -> dict[str, int]:
    """Flip each (file, offset) in turn and run ``searchpipe check``; restore after each."""
    runner = CliRunner()
    group = check_group()
    rng = np.random.default_rng(seed)
    caught = served = 0
    for path, offset in positions:
        original = path.read_bytes()
        mask = int(rng.integers(1, 256))
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(bytes([original[offset] ^ mask]))
        result = runner.invoke(group, ["check", root.name, "--index-dir", str(root.parent)])
        named = path.name in result.output
        if result.exit_code == 1 and named:
            caught += 1
        else:
            print(f"missed: {path.name}@{offset} exit {result.exit_code}: {result.output[:300]}")
        try:  # a reader either refuses the index or only sees sizes (checked cheaply)
            if open_too:
                Index.open(root)
            served += 1
        except SearchpipeError:
            pass
        with open(path, "r+b") as f:  # restore the byte (rewriting whole files is slow)
            f.seek(offset)
            f.write(original[offset : offset + 1])
    counts = {"flips": len(positions), "caught_by_check": caught}
    if open_too:
        counts["refused_by_open"] = len(positions) - served
    return counts


def index_bytes(root: Path) -> list[tuple[Path, int]]:
    vdir = root / json.loads((root / MANIFEST).read_text())["version_dir"]
    files = [root / MANIFEST, *sorted(p for p in vdir.rglob("*") if p.is_file())]
    return [(f, i) for f in files for i in range(f.stat().st_size)]


def test_every_byte_flipped_is_caught_by_check(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = [f"d{i}" for i in range(8)]
    build_fake(tmp_path / "tiny", ids, [words_text(rng, 3) for _ in ids], bm25=False)
    result = CliRunner().invoke(check_group(), ["check", "tiny", "--index-dir", str(tmp_path)])
    assert result.exit_code == 0 and "ok" in result.output
    counts = flip_all(tmp_path / "tiny", index_bytes(tmp_path / "tiny"), open_too=False)
    print(f"\nevery byte flipped (tiny index): {counts}")
    assert counts["caught_by_check"] == counts["flips"] > 3000


def test_random_flips_in_an_index_with_bm25_are_caught(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ids = [f"d{i}" for i in range(100)]
    build_fake(tmp_path / "b", ids, [words_text(rng) for _ in ids])
    everything = index_bytes(tmp_path / "b")
    pick = rng.choice(len(everything), 300, replace=False)
    counts = flip_all(tmp_path / "b", [everything[i] for i in sorted(pick)], seed=2)
    print(f"\nrandom flips (index with BM25): {counts}")
    assert counts["caught_by_check"] == counts["flips"] == 300


@pytest.mark.slow
def test_every_byte_of_an_index_with_bm25_is_caught(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ids = [f"d{i}" for i in range(30)]
    build_fake(tmp_path / "b", ids, [words_text(rng, 4) for _ in ids])
    counts = flip_all(tmp_path / "b", index_bytes(tmp_path / "b"), seed=3)
    print(f"\nevery byte flipped (index with BM25): {counts}")
    assert counts["caught_by_check"] == counts["flips"]


def test_truncated_missing_and_extra_damage_is_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = [f"d{i}" for i in range(20)]
    build_fake(tmp_path / "t", ids, [words_text(rng) for _ in ids])
    root = tmp_path / "t"
    runner, group = CliRunner(), check_group()
    vdir = Index.open(root).version_dir
    for f in [p for p in vdir.rglob("*") if p.is_file()]:
        data = f.read_bytes()
        f.write_bytes(data[:-1])
        result = runner.invoke(group, ["check", "t", "--index-dir", str(tmp_path)])
        assert result.exit_code == 1 and f.name in result.output
        with pytest.raises(SearchpipeError, match=f.name):  # sizes are checked on open
            Index.open(root)
        f.unlink()
        result = runner.invoke(group, ["check", "t", "--index-dir", str(tmp_path)])
        assert result.exit_code == 1 and "missing" in result.output
        f.write_bytes(data)
    assert runner.invoke(group, ["check", "t", "--index-dir", str(tmp_path)]).exit_code == 0


# ---------------------------------------------------------------- full disk


def write_ops(tmp_path: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    ids = [f"d{i}" for i in range(150)]
    texts = [words_text(rng) for _ in ids]
    root = tmp_path / "idx"
    more = write_jsonl(tmp_path / "more.jsonl", [f"m{i}" for i in range(30)], texts[:30])
    return {
        "reset": lambda: build_fake(root, ids, texts),
        "build": lambda: build_fake(root, ids[:100], texts[:100]),
        "add": lambda: add_documents("idx", more, tmp_path, encoder=HashEncoder()),
        "delete": lambda: delete_documents("idx", ids[:5], tmp_path),
    }


def assert_clean_old_version(root: Path, version: int) -> None:
    index = Index.open(root)
    assert index.manifest["version"] == version, "a failed write changed the committed version"
    assert verify(root.name, root.parent) == []
    left = [
        p.name
        for p in root.iterdir()
        if p.name.startswith((".staging", MANIFEST + ".tmp"))
        or (p.is_dir() and p.name not in index.manifest["kept_versions"])
    ]
    assert not left, f"left behind: {left}"


@pytest.mark.parametrize(
    "call", ["fsync", "replace", pytest.param("mkdir", marks=pytest.mark.slow)]
)
def test_enospc_at_every_call_leaves_no_partial_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """os.fsync / os.replace / os.mkdir fail with ENOSPC at their n-th call, for every n."""
    ops = write_ops(tmp_path)
    real = getattr(os, call)
    failures = completed = 0
    for name in ("build", "add", "delete"):
        total = None
        n = 0
        while total is None or n < total:
            ops["reset"]()
            version = Index.open(tmp_path / "idx").manifest["version"]
            calls = [0]

            def failing(
                *args: Any, _n: int = n, _calls: list[int] = calls, _on: bool = total is not None,
                **kwargs: Any,
            ) -> Any:  # fmt: skip
                _calls[0] += 1
                if _calls[0] - 1 == _n and _on:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real(*args, **kwargs)

            monkeypatch.setattr(os, call, failing)
            try:
                ops[name]()
                failed = False
            except SearchpipeError as e:
                failed = True
                assert "No space left" in str(e) and "idx" in str(e)
            finally:
                monkeypatch.setattr(os, call, real)
            if total is None:  # the first run counts the calls, failing none
                total = calls[0]
                continue
            if failed:
                failures += 1
                assert_clean_old_version(tmp_path / "idx", version)
            else:  # a call after the manifest swap: committed, and still sound
                completed += 1
                assert_clean_old_version(tmp_path / "idx", version + 1)
            n += 1
    print(f"\nENOSPC injected at os.{call}: {failures} failed writes left the old version, "
          f"{completed} completed despite the fault (after the swap, or swallowed); none partial")  # fmt: skip
    assert failures >= 3


def test_real_write_failures_from_a_file_size_limit(tmp_path: Path) -> None:
    summary = run_helper("full_disk.py", tmp_path)
    print(f"\nRLIMIT_FSIZE write failures: {summary}")
    assert summary["write_failures"] >= 20


# ---------------------------------------------------------------- readers during rebuilds


def test_queries_from_another_process_during_rebuilds(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "live"
    n_queries, rebuilds = 1000, 5

    def version_docs(v: int) -> tuple[list[str], list[str]]:
        ids = [f"v{v}-d{i}" for i in range(150)]
        return ids, [words_text(np.random.default_rng(v * 1000 + i)) for i in range(150)]

    build_fake(root, *version_docs(0))
    texts = [words_text(rng, 3) for _ in range(25)]
    queries = text_vectors(texts)
    np.save(tmp_path / "q.npy", queries)
    (tmp_path / "t.json").write_text(json.dumps(texts))
    stop, out = tmp_path / "stop", tmp_path / "answers.jsonl"

    def answers(index: Index) -> list[dict[str, Any]]:
        _, rows = index.search(queries, 5)
        _, brows = index.bm25.search(texts, 5)
        return [
            {
                "dense": rows_to_doc_ids(index, rows[q]).to_pylist(),
                "bm25": rows_to_doc_ids(index, brows[q][brows[q] >= 0]).to_pylist(),
            }
            for q in range(len(texts))
        ]

    expected = {1: answers(Index.open(root))}
    reader = subprocess.Popen(
        [sys.executable, str(HELPERS / "reader.py"), *map(str, [root, tmp_path / "q.npy",
         tmp_path / "t.json", out, stop, n_queries])],
        stdout=subprocess.PIPE, text=True, env=helper_env(),
    )  # fmt: skip
    assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
    try:
        for v in range(1, rebuilds + 1):
            time.sleep(0.4)
            manifest = build_fake(root, *version_docs(v))
            expected[manifest["version"]] = answers(Index.open(root))
        stop.touch()
        reader.wait(timeout=300)
    finally:
        stop.touch()
        if reader.poll() is None:
            reader.kill()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    errors = [r for r in records if "error" in r]
    wrong = [
        r
        for r in records
        if "error" not in r
        and {"dense": r["dense"], "bm25": r["bm25"]} != expected[r["version"]][r["q"]]
    ]
    seen = sorted({r["version"] for r in records if "error" not in r})
    print(f"\n{len(records)} queries during {rebuilds} rebuilds: {len(errors)} errors, "
          f"{len(wrong)} wrong answers, versions seen {seen}")  # fmt: skip
    assert len(records) >= n_queries
    assert errors == [] and wrong == []
    assert len(seen) >= 3, "the reader should have met several versions"


# ---------------------------------------------------------------- killed batch jobs resume


def job_digests(home: Path, name: str) -> dict[str, str]:
    """sha256 of every stage shard, stage record and index data file of the index job.

    Only the index job's own folder: the shared reference home also holds other tests' runs.
    """
    out = {}
    for f in sorted((home / "runs" / f"index-{name}").rglob("*")):
        if f.is_file() and (f.suffix == ".arrow" or f.name in ("_done.json", "_job.json")):
            out[str(f.relative_to(home))] = hashlib.sha256(f.read_bytes()).hexdigest()
    index = Index.open(name, home / "indexes")
    for rel, meta in index.manifest["files"].items():
        out[f"index/{rel}"] = meta["sha256"]
    return out


def kill_and_resume(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reference: Path,
    corpus: Path,
    trigger: str,
    delay: float,
) -> str:
    """Start `searchpipe index`, SIGKILL it ``delay`` s after ``trigger`` (a glob under its
    SEARCHPIPE_HOME) appears, run the job again, and compare every output with ``reference``."""
    from searchpipe.api import build_index

    home = tmp_path / f"kill-{len(list(tmp_path.iterdir()))}"
    env = {**helper_env(), "SEARCHPIPE_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "searchpipe", "index", str(corpus), "--name", "sample"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while proc.poll() is None and not list(home.glob(trigger)) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is None:
        proc.kill()  # SIGKILL
        proc.wait()
        state = "killed"
    else:
        state = "finished before the kill"
    left = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    monkeypatch.setenv("SEARCHPIPE_HOME", str(home))
    build_index(corpus=corpus, name="sample", progress=False)
    assert job_digests(home, "sample") == job_digests(reference, "sample")
    return (
        f"{state} {delay:.2f}s after {trigger}; it had left {len(left)} files; resumed: identical"
    )


def test_killed_index_job_resumes_to_identical_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample_home: Path, sample_corpus: Path
) -> None:
    """`searchpipe index` killed with SIGKILL while embedding, then run again: the same sha256
    as an uninterrupted run (the session's sample index) for every shard and index file."""
    trigger = "runs/index-sample/01-ingest/_done.json"
    print("\n" + kill_and_resume(tmp_path, monkeypatch, sample_home, sample_corpus, trigger, 0.5))


KILL_POINTS = [
    ("runs/index-sample/01-ingest/_job.json", 0.0),  # while ingesting
    ("runs/index-sample/01-ingest/_done.json", 0.0),  # embedding starts
    ("runs/index-sample/01-ingest/_done.json", 2.0),  # embedding
    ("runs/index-sample/02-embed/.part-*", 0.0),  # writing the embed shard
    ("runs/index-sample/02-embed/part-*", 0.0),  # shard renamed, _done.json not yet
    ("indexes/sample/.staging-*", 0.0),  # building the index version
    ("indexes/sample/.staging-*/bm25", 0.0),  # BM25 being saved
    ("indexes/sample/v000001", 0.0),  # version folder in place, manifest not yet swapped
    ("indexes/sample/manifest.json", 0.0),  # committed, old versions being removed
]


@pytest.mark.slow
@pytest.mark.parametrize(("trigger", "delay"), KILL_POINTS)
def test_killed_index_job_resumes_at_many_points(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sample_home: Path,
    sample_corpus: Path,
    trigger: str,
    delay: float,
) -> None:
    print("\n" + kill_and_resume(tmp_path, monkeypatch, sample_home, sample_corpus, trigger, delay))


def test_job_records_cut_short_by_a_kill_are_redone(tmp_path: Path, sample_corpus: Path) -> None:
    """A kill during the write of a stage record leaves it truncated: the next run must redo
    the stage, not fail on the JSON."""
    from searchpipe.pipeline import Pipeline
    from searchpipe.stages.ingest import Ingest

    work = tmp_path / "job"
    pipeline = Pipeline([Ingest(sample_corpus)])
    first = [b.num_rows for b in pipeline.run_job(work)]
    for record in ("_done.json", "_job.json"):
        path = work / "01-ingest" / record
        path.write_text(path.read_text()[:10])
        assert [b.num_rows for b in pipeline.run_job(work)] == first


@pytest.mark.slow
@pytest.mark.parametrize(
    ("trigger", "delay"),
    [
        ("runs/search-sample-run/01-ingest/_done.json", 0.0),  # embedding the queries
        ("runs/search-sample-run/02-embed/_done.json", 0.0),  # retrieving
        ("runs/search-sample-run/03-*/_done.json", 0.0),  # writing the run file
    ],
)
def test_killed_search_job_resumes_to_identical_outputs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sample_home: Path,
    sample_queries: Path,
    trigger: str,
    delay: float,
) -> None:
    import shutil

    from searchpipe.api import search

    def outputs(home: Path) -> dict[str, str]:
        files = [*sorted((home / "runs").glob("search-*/**/part-*.arrow")), home / "run.arrow"]
        return {str(f.relative_to(home)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}

    reference = tmp_path / "reference"
    shutil.copytree(sample_home / "indexes", reference / "indexes")
    monkeypatch.setenv("SEARCHPIPE_HOME", str(reference))
    search(index="sample", queries=sample_queries, output=reference / "run.arrow", progress=False)

    home = tmp_path / "killed"
    shutil.copytree(sample_home / "indexes", home / "indexes")
    env = {**helper_env(), "SEARCHPIPE_HOME": str(home)}
    args = [
        "search",
        "sample",
        "--queries",
        str(sample_queries),
        "--output",
        str(home / "run.arrow"),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "searchpipe", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    while proc.poll() is None and not list(home.glob(trigger)):
        time.sleep(0.01)
    time.sleep(delay)
    state = "finished before the kill" if proc.poll() is not None else "killed"
    proc.kill()
    proc.wait()
    monkeypatch.setenv("SEARCHPIPE_HOME", str(home))
    search(index="sample", queries=sample_queries, output=home / "run.arrow", progress=False)
    got = outputs(home)
    assert got == outputs(reference)
    print(f"\nsearch {state} after {trigger}: resumed, {len(got)} outputs identical")
