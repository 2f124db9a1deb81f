"""A reader process: query an index over and over while another process rebuilds it.

``python reader.py ROOT QUERIES.npy TEXTS.json OUT.jsonl STOP MIN`` opens the index afresh for
every query (so it meets every commit), answers one dense and one BM25 query, and appends
``{"version", "q", "dense", "bm25"}`` (or ``{"error"}``) per query to OUT.jsonl. It stops once
the file STOP exists and it has answered at least MIN queries.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

import searchpipe.index.bm25  # noqa: F401  (imported before "ready": the first query is not slow)
from searchpipe.index.store import Index, rows_to_doc_ids


def answer(root: Path, vector: np.ndarray, text: str) -> dict:
    index = Index.open(root)
    _, rows = index.search(vector[None, :], 5)
    dense = rows_to_doc_ids(index, rows[0]).to_pylist()
    _, brows = index.bm25.search([text], 5)
    lexical = rows_to_doc_ids(index, brows[0][brows[0] >= 0]).to_pylist()
    return {"version": index.manifest["version"], "dense": dense, "bm25": lexical}


def main() -> None:
    root, qfile, tfile, out, stop, least = sys.argv[1:7]
    queries = np.load(qfile)
    texts = json.loads(Path(tfile).read_text())
    n = 0
    with open(out, "w") as f:
        print("ready", flush=True)
        while n < int(least) or not Path(stop).exists():
            q = n % len(queries)
            try:
                record = {"q": q, **answer(Path(root), queries[q], texts[q])}
            except Exception as e:  # noqa: BLE001 - every failure is counted by the test
                record = {"q": q, "error": f"{type(e).__name__}: {e}"}
            f.write(json.dumps(record) + "\n")
            n += 1
            if n > 20 * int(least):
                break
            time.sleep(0.001)


if __name__ == "__main__":
    main()
