"""Retrieval quality on a BEIR dataset: BM25, dense, hybrid, + our reranker, full cascade.

    python benchmarks/beir_quality.py BEIR_DIR [--json] [--work DIR]

Builds the MiniLM index (dense + BM25) of the corpus, trains our reranker and embedder on
the ``train`` split (reused when the work folder already holds them), indexes the corpus
again with our embedder, picks fusion and rerank settings on the dev slice held out of
``train`` (``searchpipe tune``'s code), and evaluates on ``test``:

    bm25             BM25 alone
    dense            MiniLM dense alone
    hybrid           MiniLM dense + BM25, default RRF (k=60)
    hybrid+reranker  hybrid, top-``depth`` re-scored by our reranker
    cascade          our embedder + BM25 (tuned fusion), top-``depth`` re-scored by our reranker

nDCG@10 and Recall@100 come from the batch runs; p50 latency is the median wall time of
``Searcher.search`` on single queries (``--latency-queries`` of them), i.e. the real
query path with every model already loaded. Nothing reads the test qrels before evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("searchpipe")
SYSTEMS = ("bm25", "dense", "hybrid", "hybrid+reranker", "cascade")


def _train(kind: str, data: Path, out: Path, index: str, args: argparse.Namespace) -> Path:
    from searchpipe.training.train import (
        EmbedderTrainConfig,
        MiningConfig,
        RerankerTrainConfig,
        train_embedder,
        train_reranker,
    )

    if (out / "searchpipe_train.json").is_file():
        log.info("%s: reusing %s", kind, out)
        return out
    t0 = time.perf_counter()
    if kind == "reranker":
        summary = train_reranker(
            RerankerTrainConfig(
                data=data, output=out, index=index, epochs=args.reranker_epochs,
                max_length=args.max_length, eval_queries=args.eval_queries, eval_depth=10,
                max_steps=args.reranker_steps, batch_size=args.reranker_batch_size,
                lr=args.reranker_lr,
                mining=MiningConfig(negatives=args.reranker_negatives),
            )
        )  # fmt: skip
    else:
        summary = train_embedder(
            EmbedderTrainConfig(
                data=data, output=out, index=index, epochs=args.embedder_epochs,
                max_length=args.max_length, eval_queries=args.eval_queries,
                max_steps=args.embedder_steps, batch_size=args.embedder_batch_size,
            )
        )  # fmt: skip
    log.info(
        "%s trained in %.0fs (dev nDCG@10 %s)", kind, time.perf_counter() - t0, summary["dev_best"]
    )
    return out


def _p50(searcher: Any, texts: list[str], k: int) -> float:
    searcher.search(texts[0], k=k)  # warm-up
    times = []
    for text in texts:
        t0 = time.perf_counter()
        searcher.search(text, k=k)
        times.append(1000 * (time.perf_counter() - t0))
    return round(statistics.median(times), 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "data", type=Path, help="BEIR folder with qrels/train.tsv and qrels/test.tsv"
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="work folder (default: ./beir-work/NAME)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--depth", type=int, default=20, help="rerank depth")
    parser.add_argument("--tune-depth", action="store_true", help="choose the depth on dev")
    parser.add_argument("--latency-queries", type=int, default=30)
    parser.add_argument("--reranker-epochs", type=float, default=1.0)
    parser.add_argument("--reranker-steps", type=int, default=-1, help="cap on optimiser steps")
    parser.add_argument("--reranker-batch-size", type=int, default=16)
    parser.add_argument("--reranker-lr", type=float, default=5e-5)
    parser.add_argument("--embedder-steps", type=int, default=-1, help="cap on optimiser steps")
    parser.add_argument("--embedder-batch-size", type=int, default=16)
    parser.add_argument(
        "--only",
        choices=("reranker", "embedder"),
        default=None,
        help="only train this model (to train both in parallel), then stop",
    )
    parser.add_argument("--reranker-negatives", type=int, default=3)
    parser.add_argument("--embedder-epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=128, help="tokens per training input")
    parser.add_argument(
        "--eval-queries", type=int, default=50, help="dev queries for model selection"
    )
    args = parser.parse_args(argv)

    data: Path = args.data.resolve()
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in data.name).lstrip(".") or "beir"
    work = (args.work or Path("beir-work") / name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["SEARCHPIPE_HOME"] = str(work)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    log.setLevel(logging.INFO)

    from searchpipe.api import Searcher, build_index
    from searchpipe.eval.metrics import evaluate
    from searchpipe.eval.runs import read_qrels
    from searchpipe.stages.ingest import read_queries
    from searchpipe.training.sweep import (
        FirstStage,
        PairCache,
        as_run,
        format_table,
        reranked,
        sweep,
    )

    t_all = time.perf_counter()
    base = build_index(corpus=data, name=name)
    if args.only:
        _train(args.only, data, work / "models" / args.only, name, args)
        return {}
    reranker = _train("reranker", data, work / "models" / "reranker", name, args)
    embedder = _train("embedder", data, work / "models" / "embedder", name, args)
    tuned_index = build_index(corpus=data, name=f"{name}-ours", model=str(embedder))
    dev = reranker / "train"
    # settings chosen on the dev slice held out of train (never on test): the cascade's fusion,
    # and for both reranked systems how much of the first-stage order to keep (blend)
    from searchpipe.models.crossencoder import CrossEncoderScorer

    scorer = CrossEncoderScorer(str(reranker))
    cache = PairCache(scorer, base, {})  # both indexes hold the same doc rows
    assert base.docs.column("doc_id").equals(tuned_index.docs.column("doc_id"))
    blends = (0.0, 0.5, 1.0, 2.0, 4.0)
    choice: dict[str, dict[str, Any]] = {}
    dev_tables: dict[str, str] = {}
    for system, index, grid in (
        ("hybrid+reranker", base, {"rrf_ks": (60,), "weights": ((1.0, 1.0),)}),
        ("cascade", tuned_index, {}),
    ):
        result = sweep(
            index, dev / "dev-queries.jsonl", dev / "dev-qrels.tsv", rerank=str(reranker),
            depths=(args.depth,), retrievers=("hybrid",), rerank_top=1, blends=blends,
            cache=cache, **grid,
        )  # fmt: skip
        choice[system] = max(
            (r for r in result["rows"] if r["rerank_depth"] > 0), key=lambda r: r["ndcg@10"]
        )
        dev_tables[system] = format_table(result["rows"], choice[system])
        log.info("%s, on dev:\n%s", system, dev_tables[system])

    qrels = read_qrels(data / "qrels" / "test.tsv")
    queries = read_queries(data)
    queries = queries.filter([q in qrels for q in queries.column("query_id").to_pylist()])
    query_text = dict(
        zip(queries.column("query_id").to_pylist(), queries.column("text").to_pylist(), strict=True)
    )
    doc_ids = base.docs.column("doc_id").to_pylist()
    assert doc_ids == tuned_index.docs.column("doc_id").to_pylist()

    cache.query_text.update(query_text)
    first_base = FirstStage(base, queries, 100)
    first_ours = FirstStage(tuned_index, queries, 100)
    metrics = ("ndcg@10", "recall@100")
    runs = {
        "bm25": first_base.run("bm25")[0],
        "dense": first_base.run("dense")[0],
        "hybrid": first_base.run("hybrid")[0],
    }
    for system, first in (("hybrid+reranker", first_base), ("cascade", first_ours)):
        c = choice[system]
        ranked = first.run(
            "hybrid",
            c.get("fusion", "rrf"),
            c.get("rrf_k", 60),
            (c.get("dense_weight", 1.0), c.get("bm25_weight", 1.0)),
        )[0]
        runs[system] = reranked(ranked, cache, c["rerank_depth"], c["rerank_blend"])
    c = choice["cascade"]
    first_stage_only = {  # for the record: each reranked system's first stage alone
        "hybrid": runs["hybrid"],
        "cascade": first_ours.run(
            "hybrid",
            c.get("fusion", "rrf"),
            c.get("rrf_k", 60),
            (c.get("dense_weight", 1.0), c.get("bm25_weight", 1.0)),
        )[0],
        "ours-dense": first_ours.run("dense")[0],
    }
    table: dict[str, dict[str, float]] = {}
    texts = list(query_text.values())[: args.latency_queries]
    searchers = {
        "bm25": Searcher(base, retriever="bm25", k=100),
        "dense": Searcher(base, retriever="dense", k=100),
        "hybrid": Searcher(base, retriever="hybrid", k=100),
    }
    for system in ("hybrid+reranker", "cascade"):
        c = choice[system]
        idx = base if system == "hybrid+reranker" else tuned_index
        searchers[system] = Searcher(
            idx,
            reranker=scorer,  # one loaded reranker for both systems
            k=100,
            retriever="hybrid",
            fusion=c.get("fusion", "rrf"),
            rrf_k=c.get("rrf_k", 60),
            dense_weight=c.get("dense_weight", 1.0),
            bm25_weight=c.get("bm25_weight", 1.0),
            rerank_depth=c["rerank_depth"],
            rerank_blend=c["rerank_blend"],
        )
    for system in SYSTEMS:
        res = evaluate(as_run(runs[system], doc_ids), qrels, metrics)
        table[system] = {
            "ndcg@10": round(res["ndcg@10"], 4),
            "recall@100": round(res["recall@100"], 4),
            "p50_ms": _p50(searchers[system], texts, 100),
        }
    info = {
        "queries": len(qrels),
        "settings": {
            s: {k: v for k, v in choice[s].items() if k not in ("ndcg@10", "recall@100", "ms")}
            for s in choice
        },
        "seconds": round(time.perf_counter() - t_all, 1),
        "dev_tables": dev_tables,
        "first_stage": {
            k: evaluate(as_run(v, doc_ids), qrels, metrics) for k, v in first_stage_only.items()
        },
        "rerank_pairs_scored": cache.pairs,
        "rerank_ms_per_pair": round(cache.ms_per_pair, 2),
    }
    if args.json:
        print(json.dumps(table))
    else:
        print(f"{'system':<16} {'nDCG@10':>8} {'R@100':>8} {'p50 ms':>8}")
        for system, row in table.items():
            print(
                f"{system:<16} {row['ndcg@10']:>8.4f} {row['recall@100']:>8.4f} {row['p50_ms']:>8.1f}"
            )
        print(
            f"({info['queries']} test queries; settings chosen on dev: {json.dumps(info['settings'])})"
        )
    (work / "beir_quality.json").write_text(json.dumps({"table": table, **info}, indent=2))
    return table


if __name__ == "__main__":
    main()
