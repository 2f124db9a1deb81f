"""Load on ``searchpipe serve`` over loopback: micro-batching on and off, live commits, kill -9.

    python benchmarks/serve_load.py [--clients 32] [--queries 2000] [--commits 5] [--json]

Indexes the bundled sample corpus (300 passages, MiniLM, Flat + BM25) in a temporary folder
and runs ``searchpipe serve`` as a child process (default hybrid search, no reranker):

1. **throughput**: ``--clients`` concurrent clients send ``--queries`` queries (100 distinct:
   the sample questions and document titles), with micro-batching on (``--max-batch 32``)
   and off (``--max-batch 1``); QPS and p50 / p95 / p99 latency of each. Goal: on ≥ 2x the
   QPS of off, at an equal or better p95;
2. **live commits**: the same load (at least ``--queries``, for as long as the commits take)
   while ``--commits`` ``searchpipe add`` commands commit new versions beside the server;
   goal 0 failed requests, and every answer's hits equal ``Searcher.search`` on the version
   the answer names (computed after each commit);
3. **kill -9**: the server is killed with SIGKILL while it writes 200 documents for a client
   (``POST .../documents``), then started again: it must serve the last committed version,
   ``searchpipe check`` must pass, and answers must equal that version's.

Everything runs on the CPUs this process may use (run it under ``taskset`` to pin it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, log  # noqa: E402

SAMPLE = ROOT / "searchpipe" / "data" / "sample"
NAME = "load"
KEY = "serve-load-benchmark-key-0123456789"


def distinct_queries(n: int = 100) -> list[str]:
    questions = [json.loads(line)["text"] for line in (SAMPLE / "queries.jsonl").open()]
    titles = [json.loads(line)["title"] for line in (SAMPLE / "corpus.jsonl").open()]
    return (questions + titles)[:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A ``searchpipe serve`` child process on a free loopback port."""

    def __init__(self, home: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "searchpipe", "serve", NAME, "--port", str(self.port)]
        cmd += ["--index-dir", str(home / "indexes"), *flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()

    def _wait_ready(self) -> None:
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < 180:
            if self.proc.poll() is not None:
                raise SystemExit(f"searchpipe serve exited: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("searchpipe serve did not become ready in 180 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)


class Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: a load generator that shares
    the server's CPU should spend little of it (httpx costs several times more per request)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{self.extra}\r\n"
        )
        self.writer.write(head.encode() + data)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(
    url: str,
    queries: list[str],
    clients: int,
    total: int,
    headers: dict[str, str] | None = None,
    until: threading.Event | None = None,
) -> dict[str, Any]:
    """``clients`` concurrent clients, one keep-alive connection each, sending ``total``
    queries (more while ``until`` is unset); latency of each, and every answer kept."""
    latencies: list[float] = []
    answers: list[tuple[str, dict[str, Any]]] = []
    failures: list[str] = []
    sent = 0

    async def client() -> None:
        nonlocal sent
        conn = Connection(url, headers)
        try:
            while sent < total or (until is not None and not until.is_set()):
                query = queries[sent % len(queries)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    status, body = await conn.post(f"/v1/indexes/{NAME}/search", {"query": query})
                except (OSError, ConnectionError, asyncio.IncompleteReadError) as e:
                    failures.append(f"{type(e).__name__}: {e}")
                    conn.close()
                    conn = Connection(url, headers)
                    continue
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    failures.append(f"{status}: {body[:200]!r}")
                else:
                    answers.append((query, json.loads(body)))
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {
        "requests": sent,
        "failed": len(failures),
        "first_failures": failures[:3],
        "seconds": round(wall, 2),
        "qps": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "answers": answers,
    }


def oracle(home: Path, queries: list[str]) -> tuple[int, dict[str, list[tuple[str, float]]]]:
    """The committed version and ``Searcher.search``'s (doc_id, score) hits for each query,
    with the server's settings (defaults, fp32)."""
    from searchpipe.api import Searcher
    from searchpipe.index.store import Index

    index = Index.open(home / "indexes" / NAME)
    searcher = Searcher(index, precision="fp32")  # the server's default
    out = {}
    for q in queries:
        hits = searcher.search(q)
        out[q] = list(
            zip(hits.column("doc_id").to_pylist(), hits.column("score").to_pylist(), strict=True)
        )
    return int(index.manifest["version"]), out


def mismatches(
    answers: list[tuple[str, dict[str, Any]]], expected: dict[int, dict[str, list[Any]]]
) -> tuple[int, int]:
    """(answers whose hits differ from their version's oracle, answers naming an unknown version)."""
    wrong = unknown = 0
    for query, answer in answers:
        want = expected.get(answer["version"])
        if want is None:
            unknown += 1
            continue
        got = [(h["doc_id"], h["score"]) for h in answer["hits"]]
        ids_ok = [g[0] for g in got] == [w[0] for w in want[query]]
        scores_ok = np.allclose([g[1] for g in got], [w[1] for w in want[query]], atol=1e-4)
        wrong += not (ids_ok and scores_ok)
    return wrong, unknown


def add_corpus(path: Path, i: int, n: int = 5) -> Path:
    """``n`` new documents: copies of sample passages under new ids (they change answers)."""
    lines = (SAMPLE / "corpus.jsonl").read_text().splitlines()
    with path.open("w") as out:
        for j in range(n):
            doc = json.loads(lines[(i * 37 + j * 11) % len(lines)])
            doc["_id"] = f"live{i}-{j}"
            doc["text"] = f"{doc['text']} (revision {i})"
            out.write(json.dumps(doc) + "\n")
    return path


def throughput(home: Path, queries: list[str], args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for label, batch in (("batched", "32"), ("unbatched", "1")):
        served = Served(home, "--max-batch", batch)
        try:
            asyncio.run(load(served.url, queries, args.clients, 4 * args.clients))  # warm up
            run = asyncio.run(load(served.url, queries, args.clients, args.queries))
        finally:
            served.stop()
        run.pop("answers")
        log(f"{label}: {run}")
        result[label] = run
    b, u = result["batched"], result["unbatched"]
    result["qps_ratio"] = round(b["qps"] / u["qps"], 2)
    result["p95_ratio"] = round(b["p95_ms"] / u["p95_ms"], 2)
    return result


def live_commits(home: Path, queries: list[str], args: argparse.Namespace) -> dict[str, Any]:
    expected = dict([oracle(home, queries)])
    served = Served(home)
    done = threading.Event()
    commit_s: list[float] = []

    def committer() -> None:
        try:
            for i in range(args.commits):
                time.sleep(0.5)
                corpus = add_corpus(home / f"add{i}.jsonl", i)
                t0 = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "searchpipe", "add", NAME, str(corpus), "--keep", "3",
                     "--index-dir", str(home / "indexes")],
                    check=True, stdout=subprocess.DEVNULL,
                )  # fmt: skip
                commit_s.append(time.perf_counter() - t0)
                version, answers = oracle(home, queries)
                expected[version] = answers
                log(f"live: committed version {version}")
            time.sleep(2)  # let the last swap land under load
        finally:
            done.set()

    thread = threading.Thread(target=committer)
    thread.start()
    try:
        run = asyncio.run(load(served.url, queries, args.clients, args.queries, until=done))
    finally:
        thread.join()
        served.stop()
    answers = run.pop("answers")
    wrong, unknown = mismatches(answers, expected)
    versions: dict[int, int] = {}
    for _, a in answers:
        versions[a["version"]] = versions.get(a["version"], 0) + 1
    run.update(
        commits=len(commit_s),
        answers_per_version=dict(sorted(versions.items())),
        wrong_hits=wrong,
        unknown_version=unknown,
    )
    log(f"live: {run}")
    return run


def kill_mid_write(home: Path, queries: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from searchpipe.index.store import read_manifest

    key_file = home / "key"
    key_file.write_text(KEY + "\n")
    headers = {"Authorization": f"Bearer {KEY}"}
    before = read_manifest(home / "indexes" / NAME)["version"]
    served = Served(home, "--api-key-file", str(key_file))
    lines = (SAMPLE / "corpus.jsonl").read_text().splitlines()
    docs = [{**json.loads(lines[j % len(lines)]), "doc_id": f"crash-{j}"} for j in range(200)]
    for d in docs:
        d.pop("_id", None)

    write_status: list[int] = []

    def write() -> None:
        try:
            r = httpx.post(f"{served.url}/v1/indexes/{NAME}/documents", json={"documents": docs},
                           headers=headers, timeout=120)  # fmt: skip
            write_status.append(r.status_code)
        except httpx.HTTPError:
            pass  # the server is killed under it

    stop = threading.Event()
    during: dict[str, Any] = {}

    def searches() -> None:
        during.update(asyncio.run(load(served.url, queries, args.clients, 0, headers, stop)))

    clients = threading.Thread(target=searches)
    clients.start()
    time.sleep(0.5)
    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(args.kill_after)
    served.kill()  # mid-load, and (unless it was quick) mid-write
    stop.set()
    writer.join()
    clients.join()
    after_kill = read_manifest(home / "indexes" / NAME)["version"]
    served = Served(home, "--api-key-file", str(key_file))
    try:
        info = httpx.get(f"{served.url}/v1/indexes/{NAME}", headers=headers, timeout=30).json()
        run = asyncio.run(load(served.url, queries, args.clients, 200, headers=headers))
    finally:
        served.stop()
    check = subprocess.run(
        [sys.executable, "-m", "searchpipe", "check", NAME, "--index-dir", str(home / "indexes")],
        capture_output=True, text=True,
    )  # fmt: skip
    version, expected = oracle(home, queries)
    wrong, unknown = mismatches(run.pop("answers"), {version: expected})
    result = {
        "searches_before_kill": len(during.get("answers", [])),
        "write_answered_before_kill": bool(write_status),
        "version_before": before,
        "committed_version_after_kill": after_kill,
        "served_after_restart": info["version"],
        "check_exit": check.returncode,
        "check": (check.stdout or check.stderr).strip(),
        "requests_after_restart": run["requests"],
        "failed_after_restart": run["failed"],
        "wrong_hits": wrong + unknown,
    }
    log(f"kill -9: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--commits", type=int, default=5)
    parser.add_argument("--kill-after", type=float, default=3.0, help="seconds into the write")
    parser.add_argument("--work", type=Path, default=None, help="folder to keep (default: temp)")
    parser.add_argument("--phases", default="throughput,live,kill", help="which to run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from searchpipe.api import build_index

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        home = args.work or Path(tmp)
        os.environ["SEARCHPIPE_HOME"] = str(home)
        build_index(corpus=SAMPLE / "corpus.jsonl", name=NAME, index_root=home / "indexes",
                    progress=False)  # fmt: skip
        queries = distinct_queries()
        phases = args.phases.split(",")
        result: dict[str, Any] = {"cpus": len(os.sched_getaffinity(0)), "clients": args.clients}
        if "throughput" in phases:
            result["throughput"] = throughput(home, queries, args)
        if "live" in phases:
            result["live_commits"] = live_commits(home, queries, args)
        if "kill" in phases:
            result["kill_9"] = kill_mid_write(home, queries, args)
    if args.json:
        emit(result, True)
        return
    if "throughput" in result:
        _print_throughput(result["throughput"])
    if "live_commits" in result:
        _print_live(result["live_commits"])
    if "kill_9" in result:
        _print_kill(result["kill_9"])


def _print_throughput(t: dict[str, Any]) -> None:
    print(f"{'':<12}{'QPS':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'failed':>8}")
    for label in ("batched", "unbatched"):
        r = t[label]
        print(
            f"{label:<12}{r['qps']:>8}{r['p50_ms']:>9}{r['p95_ms']:>9}{r['p99_ms']:>9}{r['failed']:>8}"
        )
    print(f"micro-batching: {t['qps_ratio']}x QPS, p95 {t['p95_ratio']}x")


def _print_live(live: dict[str, Any]) -> None:
    print(
        f"live commits: {live['commits']} commits, {live['requests']} requests, {live['failed']} "
        f"failed, {live['wrong_hits']} answers differing from their version's Searcher.search, "
        f"answers per version {live['answers_per_version']}"
    )


def _print_kill(k: dict[str, Any]) -> None:
    print(
        f"kill -9 mid-load ({k['searches_before_kill']} searches answered) and "
        f"{'after' if k['write_answered_before_kill'] else 'mid'}-write: committed "
        f"v{k['committed_version_after_kill']} (was "
        f"v{k['version_before']}), served v{k['served_after_restart']} after restart, check exit "
        f"{k['check_exit']}, {k['failed_after_restart']} failed / {k['wrong_hits']} wrong of "
        f"{k['requests_after_restart']} after restart"
    )


if __name__ == "__main__":
    main()
