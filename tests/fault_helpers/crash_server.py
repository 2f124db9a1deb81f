"""Kill -9 a writer at many points and check what a reader finds afterwards.

Run as ``python crash_server.py WORKDIR OP POINTS SEED``. Imports happen once; each trial
forks a child that runs one write (``build``, ``add`` or ``delete``) on a fresh copy of a
base index and is killed with SIGKILL, either

- by itself, just before or just after its k-th durability call (``os.fsync``,
  ``os.replace``, ``os.rename``, ``os.unlink``, ``os.mkdir``, ``shutil.rmtree``,
  ``faiss.write_index``): every such point is tried in turn, or
- by this process after a random delay within the write's measured duration.

After each kill the index must open, pass ``verify`` byte for byte, be at the old or the new
version with exactly that version's documents, and take a further write. A JSON summary is
printed on the last line of stdout.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# import everything the children use once, here, so each fork starts warm (imports start
# no worker threads; running faiss or Arrow code would, and this process never does)
import multiprocessing.synchronize  # noqa: E402, F401

import bm25s  # noqa: E402, F401
import faiss  # noqa: E402
import filelock  # noqa: E402, F401
import numpy as np  # noqa: E402
import pandas  # noqa: E402, F401  (pyarrow imports it lazily)
import pyarrow.compute  # noqa: E402, F401
import pyarrow.ipc  # noqa: E402, F401
import pyarrow.pandas_compat  # noqa: E402, F401
import Stemmer  # noqa: E402, F401
import tqdm.std  # noqa: E402, F401

import searchpipe.index.bm25  # noqa: E402, F401
import searchpipe.stages.embed  # noqa: E402, F401
from fault_helpers.fakes import HashEncoder, build_fake, words_text, write_jsonl  # noqa: E402
from searchpipe import columns as C  # noqa: E402
from searchpipe.api.update import add_documents, delete_documents  # noqa: E402
from searchpipe.index.store import Index, check_index  # noqa: E402

N_BASE = 120
CALLS = {
    os: ("fsync", "replace", "rename", "unlink", "mkdir"),
    shutil: ("rmtree",),
    faiss: ("write_index",),
}


def instrument(crash_at: int) -> None:
    """Make the process SIGKILL itself at durability call ``crash_at // 2``, before or after."""
    counter = [0]
    target, after = divmod(crash_at, 2)

    def wrap(fn: Any) -> Any:
        def inner(*args: Any, **kwargs: Any) -> Any:
            n = counter[0]
            counter[0] += 1
            if n == target and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            result = fn(*args, **kwargs)
            if n == target and after:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return inner

    for module, names in CALLS.items():
        for name in names:
            setattr(module, name, wrap(getattr(module, name)))


def count_calls() -> list[int]:
    counter = [0]

    def wrap(fn: Any) -> Any:
        def inner(*args: Any, **kwargs: Any) -> Any:
            counter[0] += 1
            return fn(*args, **kwargs)

        return inner

    for module, names in CALLS.items():
        for name in names:
            setattr(module, name, wrap(getattr(module, name)))
    return counter


class Scenario:
    """A base index and one write on it, with the doc ids expected before and after."""

    def __init__(self, work: Path, op: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.work, self.op = work, op
        self.base = work / "base"
        self.ids = [f"d{i}" for i in range(N_BASE)]
        self.texts = [words_text(rng) for _ in self.ids]
        in_child(lambda: build_fake(self.base / "idx", self.ids, self.texts))
        if op == "build":  # a full rebuild with other documents
            self.new_ids = [f"n{i}" for i in range(N_BASE // 2)]
            self.new_texts = [words_text(rng) for _ in self.new_ids]
            self.after = set(self.new_ids)
        elif op == "add":  # 20 new, 10 changed, 10 unchanged
            more_ids = [f"a{i}" for i in range(20)] + self.ids[:20]
            more_texts = [words_text(rng) for _ in range(30)] + self.texts[10:20]
            write_jsonl(work / "more.jsonl", more_ids, more_texts)
            self.after = set(self.ids) | set(more_ids)
        else:  # delete
            self.gone = self.ids[::3]
            self.after = set(self.ids) - set(self.gone)
        self.before = set(self.ids)
        self.base_version = 1

    def run(self, root: Path) -> None:
        if self.op == "build":
            build_fake(root, self.new_ids, self.new_texts)
        elif self.op == "add":
            add_documents(root.name, self.work / "more.jsonl", root.parent, encoder=HashEncoder())
        else:
            delete_documents(root.name, self.gone, root.parent)

    def fresh_copy(self) -> Path:
        trial = self.work / "trial"
        shutil.rmtree(trial, ignore_errors=True)
        shutil.copytree(self.base, trial)
        return trial / "idx"

    def check(self, root: Path) -> str:
        """'old' or 'new'; raises if the index is unreadable, damaged or a mix."""
        report = check_index(root)  # every byte against the manifest, counts agree
        index = Index.open(root)
        ids = set(index.docs.column(C.DOC_ID).to_pylist())
        version = index.manifest["version"]
        if version == self.base_version and ids == self.before:
            state = "old"
        elif version == self.base_version + 1 and ids == self.after:
            state = "new"
        else:
            raise AssertionError(f"version {version} with {len(ids)} docs is neither old nor new")
        # and the dense index maps rows to the right ids: each doc's own vector finds it first
        vectors = index.faiss_index.reconstruct_n(0, index.faiss_index.ntotal)
        _, rows = index.search(vectors, 1)
        assert (rows[:, 0] == np.arange(len(index))).all(), "row ↔ id mapping broken"
        assert report["docs"] == len(index)
        return state


def in_child(work: Any) -> int:
    """Run ``work`` in a forked child and return its int result (0..100).

    This process only forks, waits and kills: it never runs faiss, Arrow or BM25 code
    itself, so it has no worker threads whose locks a forked child could inherit held.
    """
    pid = os.fork()
    if pid == 0:
        try:
            after_fork()
            result = work()
            os._exit(int(result) if isinstance(result, int) else 0)
        except BaseException as e:  # noqa: BLE001 - reported through the exit code
            import traceback

            traceback.print_exc()
            print(f"child error: {type(e).__name__}: {e}", file=sys.stderr)
            os._exit(101)
    status = wait(pid)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) == 101:
        raise AssertionError(f"a checking child failed (status {status})")
    return os.WEXITSTATUS(status)


STATES = {1: "old", 2: "new"}


def after_fork() -> None:
    """Give the child its own tqdm lock: tqdm's default one is a semaphore shared across
    fork, and a child killed while holding it would leave its siblings waiting forever."""
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def wait(pid: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"a child hung for {timeout}s")


def child(scenario: Scenario, root: Path, crash_at: int | None) -> None:
    """In the forked child: run the write (instrumented), exit 0 if it was not killed."""
    try:
        after_fork()
        if crash_at is not None:
            instrument(crash_at)
        scenario.run(root)
        os._exit(0)
    except BaseException as e:  # noqa: BLE001 - reported to the parent by exit code
        print(f"child error: {type(e).__name__}: {e}", file=sys.stderr)
        os._exit(3)


def trial(scenario: Scenario, crash_at: int | None, delay: float | None) -> tuple[str, int]:
    root = scenario.fresh_copy()
    pid = os.fork()
    if pid == 0:
        child(scenario, root, crash_at)
    if delay is not None:
        time.sleep(delay)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    status = wait(pid)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if not killed and os.WEXITSTATUS(status) != 0:
        raise AssertionError(f"writer failed without being killed (exit {os.WEXITSTATUS(status)})")
    state = STATES[in_child(lambda: {"old": 1, "new": 2}[scenario.check(root)])]
    # the next writer cleans up after the dead one and commits
    pid = os.fork()
    if pid == 0:
        child(scenario, root, None)
    status = wait(pid)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the next write failed"
    left = [p.name for p in root.iterdir() if p.name.startswith((".staging", "manifest.json.tmp"))]
    assert not left, f"left behind: {left}"

    def next_version_committed() -> int:
        assert Index.open(root).manifest["version"] >= scenario.base_version + 1
        return 0

    in_child(next_version_committed)
    return state, int(killed)


def main() -> None:
    work, op, points, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    faiss.omp_set_num_threads(1)
    scenario = Scenario(work, op, seed)
    # one clean run in a child: how many durability calls, how long it takes
    root = scenario.fresh_copy()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        after_fork()
        counter = count_calls()
        t0 = time.perf_counter()
        scenario.run(root)
        os.write(w, json.dumps([counter[0], time.perf_counter() - t0]).encode())
        os._exit(0)
    os.close(w)
    calls, seconds = json.loads(os.read(r, 1000))
    os.waitpid(pid, 0)
    assert STATES[in_child(lambda: {"old": 1, "new": 2}[scenario.check(root)])] == "new"
    rng = random.Random(seed)
    # every durability call, killed before and after it; then random delays
    enumerated = list(range(2 * calls))
    if len(enumerated) > points:
        enumerated = sorted(rng.sample(enumerated, points))
    states = {"old": 0, "new": 0}
    killed = 0
    for k in enumerated:
        state, was_killed = trial(scenario, k, None)
        states[state] += 1
        killed += was_killed
    timed = max(points - len(enumerated), points // 2)
    for _ in range(timed):
        state, was_killed = trial(scenario, None, rng.uniform(0, seconds * 1.1))
        states[state] += 1
        killed += was_killed
    print(
        json.dumps(
            {
                "op": op,
                "durability_calls": calls,
                "write_seconds": round(seconds, 4),
                "crash_points_enumerated": len(enumerated),
                "crash_points_random_delay": timed,
                "killed": killed,
                "unreadable": 0,
                **states,
            }
        )
    )


if __name__ == "__main__":
    main()
