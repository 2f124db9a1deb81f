"""The token budget (most padded tokens per forward pass): our encoder at several budgets.

    python benchmarks/token_budget.py [--json] [--budgets 4096,8192,16384] [--docs 1024]

The budget sets both the batch shape and the row count the fused linears' packed weights are
laid out for. Too small a batch wastes the matmul kernels; too large a one falls out of the
CPU's caches. This runs our BiEncoder and CrossEncoderScorer at each budget in one process,
rotating which goes first, on the same SciFact texts (documents in chunks of 256; 100 test
queries x 20 hybrid candidates in chunks of 200 pairs at 256 tokens; and one query's 20 pairs,
p50), and prints each budget's throughput over the library default's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import emit, log, rotate
from speed import make_reranker, scifact_docs, scifact_index, scifact_test_queries


def rerank_pairs(home: Path) -> tuple[list[str], list[str]]:
    import pyarrow as pa

    from searchpipe.api import Searcher

    index = scifact_index(home)
    queries = scifact_test_queries()
    qids, qtexts = list(queries)[:100], list(queries.values())[:100]
    hits = Searcher(index).search_batch(pa.table({"query_id": qids, "text": qtexts}), k=20)
    docs = index.docs.take(hits.column("doc_row"))
    titles, texts = docs.column("title").to_pylist(), docs.column("text").to_pylist()
    return hits.column("query_text").to_pylist(), [
        f"{t} {x}".strip() for t, x in zip(titles, texts, strict=True)
    ]


def main() -> None:
    from searchpipe.config import TOKEN_BUDGET
    from searchpipe.models.biencoder import BiEncoder
    from searchpipe.models.crossencoder import CrossEncoderScorer
    from searchpipe.models.precision import cpu_kernels

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--budgets", default="4096,8192,16384")
    parser.add_argument("--docs", type=int, default=1024)
    args = parser.parse_args()
    budgets = sorted({int(b) for b in args.budgets.split(",")} | {TOKEN_BUDGET})
    result: dict[str, Any] = {"default": TOKEN_BUDGET, "kernels": cpu_kernels()["path"]}

    _, docs = scifact_docs()
    docs = docs[: args.docs]
    encoders = {b: BiEncoder("minilm", device="cpu", token_budget=b) for b in budgets}
    systems = {str(b): enc.encode for b, enc in encoders.items()}
    chunks = [docs[i : i + 256] for i in range(0, len(docs), 256)]
    for fn in systems.values():  # warm: every shape the timed run will see
        for chunk in chunks:
            fn(chunk)
    log(f"embed: {len(docs)} docs, budgets {budgets}")
    runs = rotate(systems, chunks)
    result["embed_docs_per_s"] = {b: round(len(docs) / runs[b][0], 1) for b in systems}
    del encoders, systems

    with tempfile.TemporaryDirectory(prefix="budget-") as home:
        reranker = make_reranker(None)
        q_text, d_text = rerank_pairs(Path(home))
        scorers = {
            b: CrossEncoderScorer(reranker, device="cpu", max_length=256, token_budget=b)
            for b in budgets
        }

        def scorer(s: CrossEncoderScorer) -> Any:
            return lambda c: s.score(c[0], c[1])

        systems = {str(b): scorer(s) for b, s in scorers.items()}
        pairs = [(q_text[i : i + 200], d_text[i : i + 200]) for i in range(0, len(q_text), 200)]
        for fn in systems.values():
            for chunk in pairs:
                fn(chunk)
        log(f"rerank: {len(q_text)} pairs at 256 tokens, budgets {budgets}")
        runs = rotate(systems, pairs)
        result["rerank_pairs_per_s"] = {b: round(len(q_text) / runs[b][0], 1) for b in systems}
        per_query = [(q_text[i : i + 20], d_text[i : i + 20]) for i in range(0, len(q_text), 20)]
        times: dict[str, list[float]] = {b: [] for b in systems}
        for i, chunk in enumerate(per_query):
            names = list(systems)
            for b in names[i % len(names) :] + names[: i % len(names)]:
                t0 = time.perf_counter()
                systems[b](chunk)
                times[b].append(1000 * (time.perf_counter() - t0))
        result["rerank_20_pairs_p50_ms"] = {
            b: round(float(np.median(t)), 1) for b, t in times.items()
        }

    base = str(TOKEN_BUDGET)
    for key in ("embed_docs_per_s", "rerank_pairs_per_s"):
        result[key.replace("_per_s", "_vs_default")] = {
            b: round(v / result[key][base], 3) for b, v in result[key].items()
        }
    emit(result, args.json)


if __name__ == "__main__":
    main()
