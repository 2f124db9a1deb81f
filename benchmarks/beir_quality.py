"""Retrieval quality on a BEIR dataset: zero-shot, our trained models, and label-free training.

    python benchmarks/beir_quality.py BEIR_DIR [--json] [--work DIR]

Builds the MiniLM index (dense + BM25) of the corpus, trains our models with their default
recipes (``searchpipe train ...`` with no options), and evaluates every system on ``test``
through the real query path (``searchpipe.api.search``). Every choice is made on the dev
slice held out of ``train`` (or, label-free, on held-out pseudo-queries); nothing reads the
test qrels before evaluation.

    bm25                 BM25 alone
    dense                MiniLM dense alone
    hybrid               MiniLM dense + BM25, default RRF (k=60)
    hybrid+reranker      hybrid, reranked as our reranker's folder says (depth and blend
                         chosen on dev when it was trained; or not at all)
    ours                 our embedder + BM25, fusion chosen on dev
    cascade              ours, reranked by our reranker (depth and blend chosen on dev for
                         this first stage)
    label-free           our label-free embedder (trained on pseudo-queries, no qrels) + BM25
    label-free+reranker  hybrid, reranked as our label-free reranker's folder says

Training runs into fresh folders under the work folder; a re-run reuses a finished model only
when its recorded settings equal today's, and refuses (exit 2) when they differ.
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
SYSTEMS = (
    "bm25", "dense", "hybrid", "hybrid+reranker", "ours", "cascade", "label-free",
    "label-free+reranker",
)  # fmt: skip
METRICS = ("ndcg@10", "recall@100")


def train(kind: str, cfg: Any) -> dict[str, Any]:
    """Train with ``cfg`` (or reuse a finished run with the very same settings)."""
    from searchpipe.training.train import finished, train_embedder, train_reranker

    done = Path(cfg.output) / "searchpipe_train.json"
    if finished(cfg):
        log.info("%s: reusing %s (same settings)", kind, cfg.output)
        return json.loads(done.read_text())
    run = train_reranker if kind == "reranker" else train_embedder
    summary = run(cfg, resume=True)
    log.info(
        "%s trained in %.0fs (dev nDCG@10 %s)", cfg.output, summary["seconds"], summary["dev_best"]
    )
    return summary


def p50_ms(searcher: Any, texts: list[str]) -> float:
    searcher.search(texts[0])  # warm-up
    times = []
    for text in texts:
        t0 = time.perf_counter()
        searcher.search(text)
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
    parser.add_argument("--latency-queries", type=int, default=20)
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated subset of the systems"
    )
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    data = args.data.resolve()
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in data.name).lstrip(".") or "beir"
    work = (args.work or Path("beir-work") / name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["SEARCHPIPE_HOME"] = str(work)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    log.setLevel(logging.INFO)

    from searchpipe.api import Searcher, build_index, search
    from searchpipe.config import SearchSettings
    from searchpipe.eval.metrics import evaluate
    from searchpipe.stages.ingest import read_queries
    from searchpipe.training.sweep import sweep
    from searchpipe.training.train import EmbedderTrainConfig, RerankerTrainConfig

    t_all = time.perf_counter()
    models = work / "models"
    build_index(corpus=data, name=name)

    # the test queries; their qrels are read only to score a finished run
    judged_path = data / "qrels" / "test.tsv"
    queries = read_queries(data)
    from searchpipe.eval.runs import read_qrels

    judged = read_qrels(judged_path)
    queries = queries.filter([q in judged for q in queries.column("query_id").to_pylist()])
    test_queries = work / "test-queries.jsonl"
    ids, texts_all = queries.column("query_id").to_pylist(), queries.column("text").to_pylist()
    test_queries.write_text(
        "".join(
            json.dumps({"_id": q, "text": t}) + "\n" for q, t in zip(ids, texts_all, strict=True)
        )
    )
    texts = texts_all[: args.latency_queries]
    table: dict[str, dict[str, Any]] = {}
    trained: dict[str, dict[str, Any]] = {}
    chosen: dict[str, dict[str, Any]] = {}

    def report() -> dict[str, Any]:
        info = {
            "queries": len(judged),
            "seconds": round(time.perf_counter() - t_all, 1),
            "settings": chosen,
            "training": {
                k: {
                    key: v.get(key)
                    for key in (
                        "seconds", "train_seconds", "steps", "train_rows", "rows_per_second",
                        "pairs_per_second", "texts_per_second", "dev_best", "dev_init", "kept", "budget", "usage",
                        "stopped_on_time_at",
                    )
                }
                for k, v in trained.items()
            },
        }  # fmt: skip
        out = {"table": table, **info}
        (work / "beir_quality.json").write_text(json.dumps(out, indent=2))
        return out

    def run(system: str, index: str, s: SearchSettings) -> None:
        s = s.model_copy(update={"k": 100})
        chosen[system] = {"index": index, **s.model_dump(exclude_none=True)}
        out = work / "runs" / f"test-{system}.arrow"
        summary = search(
            index=index, queries=test_queries, output=out, **s.model_dump(exclude_none=True)
        )
        row: dict[str, Any] = {m: round(evaluate(out, judged, METRICS)[m], 4) for m in METRICS}
        if s.rerank:
            # the reranker's own contribution: the same first stage without it
            first = s.model_copy(
                update={"rerank": None, "rerank_depth": None, "rerank_blend": None}
            )
            first_out = work / "runs" / f"test-{system}-first-stage.arrow"
            search(
                index=index,
                queries=test_queries,
                output=first_out,
                **first.model_dump(exclude_none=True),
            )
            row["first_stage_ndcg@10"] = round(evaluate(first_out, judged, METRICS)["ndcg@10"], 4)
            row["reranked_pairs"] = summary.get("reranked_pairs")
            row["truncated_pairs"] = summary.get("truncated_pairs")
        row["p50_ms"] = p50_ms(Searcher(index, s.model_copy(update={"k": 10})), texts)
        table[system] = row
        log.info("%s: %s", system, row)
        report()

    def dev_files(model: Path) -> tuple[Path, Path]:
        return model / "train" / "dev-queries.jsonl", model / "train" / "dev-qrels.tsv"

    for system, retriever in (("bm25", "bm25"), ("dense", "dense"), ("hybrid", "hybrid")):
        if system in wanted:
            run(system, name, SearchSettings(retriever=retriever))
    if {"hybrid+reranker", "cascade"} & set(wanted):
        rr = models / "reranker"
        trained["reranker"] = train(
            "reranker", RerankerTrainConfig(data=data, output=rr, index=name)
        )
        if "hybrid+reranker" in wanted:
            run("hybrid+reranker", name, SearchSettings(rerank=str(rr)))  # as its folder says
    if {"ours", "cascade"} & set(wanted):
        emb = models / "embedder"
        trained["embedder"] = train(
            "embedder", EmbedderTrainConfig(data=data, output=emb, index=name)
        )
        build_index(corpus=data, name=f"{name}-ours", model=str(emb))
        fusion = sweep(f"{name}-ours", *dev_files(emb))["search"]  # first stage chosen on dev
        run("ours", f"{name}-ours", SearchSettings(**fusion))
        if "cascade" in wanted:
            # both dev slices are heads of the same seeded ranking of the train queries (equal
            # at the default fractions): the smaller lies inside the other, so neither model
            # trained on its queries
            common = min(
                (dev_files(emb), dev_files(models / "reranker")),
                key=lambda files: len(files[0].read_text().splitlines()),
            )
            cascade = sweep(
                f"{name}-ours", *common, rerank=str(models / "reranker"),
                depths=(10, 20, 50), rerank_top=1,
            )["search"]  # fmt: skip
            run("cascade", f"{name}-ours", SearchSettings(**cascade))
    if "label-free" in wanted:
        lf = models / "label-free-embedder"
        trained["label-free embedder"] = train(
            "embedder", EmbedderTrainConfig(data=data, output=lf, index=name, no_labels=True)
        )
        build_index(corpus=data, name=f"{name}-label-free", model=str(lf))
        run("label-free", f"{name}-label-free", SearchSettings())
    if "label-free+reranker" in wanted:
        lfr = models / "label-free-reranker"
        trained["label-free reranker"] = train(
            "reranker", RerankerTrainConfig(data=data, output=lfr, index=name, no_labels=True)
        )
        run("label-free+reranker", name, SearchSettings(rerank=str(lfr)))

    out = report()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{'system':<20} {'nDCG@10':>8} {'R@100':>8} {'1st stage':>10} {'p50 ms':>8}")
        for system, row in table.items():
            first = row.get("first_stage_ndcg@10")
            print(
                f"{system:<20} {row['ndcg@10']:>8.4f} {row['recall@100']:>8.4f} "
                f"{first if first is not None else '':>10} {row['p50_ms']:>8.1f}"
            )
        for k, v in out["training"].items():
            print(
                f"trained {k}: {v['seconds']:.0f}s, {v['steps']} steps, dev nDCG@10 {v['dev_best']}"
            )
    return table


if __name__ == "__main__":
    main()
