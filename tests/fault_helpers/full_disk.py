"""Writes that fail for real: a file-size limit (RLIMIT_FSIZE) makes the kernel refuse writes.

``python full_disk.py WORKDIR`` builds a small index, then for a range of limits tries a
rebuild, an add and a delete with every file capped at that many bytes (SIGXFSZ ignored, so
``write`` fails with EFBIG as it would with ENOSPC). Each failed write must raise a
``SearchpipeError`` (no traceback), leave the index at its old version, byte-for-byte sound,
and leave no staging folder, temp manifest or uncommitted version behind. Prints a JSON
summary on the last line.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from fault_helpers.fakes import HashEncoder, build_fake, words_text, write_jsonl  # noqa: E402
from searchpipe.api.update import add_documents, delete_documents  # noqa: E402
from searchpipe.errors import SearchpipeError  # noqa: E402
from searchpipe.index.store import Index, verify  # noqa: E402


def main() -> None:
    work = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    root = work / "idx"
    ids = [f"d{i}" for i in range(300)]
    texts = [words_text(rng, 30) for _ in ids]
    build_fake(root, ids, texts)
    more = write_jsonl(work / "more.jsonl", [f"m{i}" for i in range(50)], texts[:50])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    ops = {
        "build": lambda: build_fake(root, ids[:200], texts[:200]),
        "add": lambda: add_documents("idx", more, work, encoder=HashEncoder()),
        "delete": lambda: delete_documents("idx", ids[:10], work),
    }
    failed = succeeded = 0
    limits = [0, 100, 500, 1000, 2000, 4000, 8000, 16000, 24000, 32000, 48000, 64000]
    for limit in limits:
        for name, op in ops.items():
            build_fake(root, ids, texts)  # the same starting point for every write
            before = Index.open(root).manifest["version"]
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
            try:
                op()
                outcome = "ok"
            except SearchpipeError as e:
                outcome = str(e)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
            index = Index.open(root)
            assert verify("idx", work) == [], f"{name} at {limit} bytes left a damaged index"
            left = sorted(
                p.name
                for p in root.iterdir()
                if p.name.startswith((".staging", "manifest.json.tmp"))
                or (p.is_dir() and p.name not in index.manifest["kept_versions"])
            )
            assert not left, f"{name} at {limit} bytes left {left}"
            if outcome == "ok":
                succeeded += 1
                assert index.manifest["version"] in (before, before + 1)
            else:
                failed += 1
                assert index.manifest["version"] == before, f"{name}: partial commit"
                assert "idx" in outcome, outcome
    print(
        json.dumps({"write_failures": failed, "writes_completed": succeeded, "limits": len(limits)})
    )


if __name__ == "__main__":
    main()
