"""Scale-out: the Ray engine against the local one on SciFact (5,183 abstracts), or on a
synthetic corpus with a tiny model.

    python benchmarks/scale_out.py [--workers 1,2] [--json]
    python benchmarks/scale_out.py --synthetic 1000000 [--workers 1,2] [--json]
    python benchmarks/scale_out.py --synthetic 1000000 --index-type IVF1024,Flat --on-disk

``--index-type``/``--on-disk`` build that FAISS index in every run (``--on-disk``: an IVF
index built in blocks and merged into one memory-mapped inverted-list file).

Each run is a fresh subprocess (a cold driver, so its peak RSS is its own): the local engine,
then ``--engine ray`` with 1 and 2 workers of one CPU each on a Ray started on this machine.
Reported per run: wall seconds (model load, Ray start and index build included), docs/s and
passages/s over that wall time, the seconds Ray spent embedding, and the driver's peak RSS.
Then each Ray index is compared with the local one: doc ids per row (must be equal), the
largest vector difference, and top-10 agreement (dense, SciFact's queries).

``--synthetic N`` indexes N synthetic documents (``benchmarks/scale.py``'s corpus) with its
tiny random BERT and no BM25, so that the engine's own costs show (shards written, read and
checked; the driver's FAISS adds) rather than MiniLM's: the driver's peak RSS must stay near
the FAISS index plus one shard, however many documents there are. Its top-10 check searches
the first 200 documents' texts.

Figures here are from a 2-core machine shared with other work: they say what this code does
on it, not what a quiet machine or a cluster would do. Skips with a message if
../shared/data/scifact is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, SHARED, emit, log

SCIFACT = SHARED / "scifact"


def one_run(
    engine: str, workers: int, shard_rows: int, home: Path, synthetic: int, faiss: dict[str, Any]
) -> dict[str, Any]:
    """Build SciFact (or the synthetic corpus) in this process (called in a subprocess);
    returns its figures."""
    import resource

    from searchpipe.api import build_index
    from searchpipe.config import EngineConfig

    corpus, extra = SCIFACT, {}
    if synthetic:
        from scale import synthetic_corpus, tiny_model

        corpus = synthetic_corpus(home.parent / f"corpus-{synthetic}.arrow", synthetic)
        extra = {"model": str(tiny_model(home.parent / "tiny-bert")), "bm25": False}

    os.environ["SEARCHPIPE_HOME"] = str(home)
    cfg = EngineConfig(
        kind=engine,  # type: ignore[arg-type]
        workers=workers or None,
        shard_rows=shard_rows or None,
        work_dir=home / "work",
    )
    t0 = time.perf_counter()
    index = build_index(corpus=corpus, name="scifact", progress=False, engine=cfg, **extra, **faiss)
    seconds = time.perf_counter() - t0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    m = index.manifest
    return {
        "engine": engine if engine == "local" else f"ray, {workers} worker(s)",
        "seconds": round(seconds, 1),
        "docs": m["doc_count"],
        "passages": m["passage_count"],
        "docs_per_s": round(m["doc_count"] / seconds, 1),
        "passages_per_s": round(m["passage_count"] / seconds, 1),
        "ray_embed_seconds": m.get("engine", {}).get("embed_seconds"),
        "shards": len(m.get("engine", {}).get("shards", [])) or None,
        "driver_peak_rss_mib": round(rss_kb / 1024),
        "index": str(index.root),
    }


def compare(ray_root: Path, local_root: Path, synthetic: int) -> dict[str, Any]:
    """How far a Ray index is from the local one."""
    import numpy as np
    import pyarrow as pa

    from searchpipe import columns as C
    from searchpipe.api import Searcher
    from searchpipe.arrow import arrow_to_vectors
    from searchpipe.index.store import Index, check_index
    from searchpipe.stages.ingest import read_queries

    ray_index, local = Index.open(ray_root), Index.open(local_root)
    same_ids = (
        ray_index.docs.column(C.DOC_ID).to_pylist() == local.docs.column(C.DOC_ID).to_pylist()
        and ray_index.docs.column(C.PASSAGE).to_pylist() == local.docs.column(C.PASSAGE).to_pylist()
    )
    assert ray_index.vectors is not None and local.vectors is not None
    a = arrow_to_vectors(ray_index.vectors.column(C.EMBEDDING))
    b = arrow_to_vectors(local.vectors.column(C.EMBEDDING))
    if synthetic:
        texts = local.docs.column(C.TEXT).slice(0, 200)
        queries = pa.table({"query_id": [f"q{i}" for i in range(len(texts))], "text": texts})
    else:
        queries = read_queries(SCIFACT / "queries.jsonl")
    s_ray = Searcher(ray_index, retriever="dense")
    s_local = Searcher(local, retriever="dense", encoder=s_ray.encoder)

    def top10(s: Searcher) -> dict[str, list[str]]:
        hits: dict[str, list[str]] = {}
        for row in s.search_batch(queries, k=10).select(["query_id", "doc_id"]).to_pylist():
            hits.setdefault(row["query_id"], []).append(row["doc_id"])
        return hits

    got, want = top10(s_ray), top10(s_local)
    identical = sum(got[q] == want.get(q) for q in got)
    overlap = np.mean([len(set(got[q]) & set(want.get(q, []))) / 10 for q in got])
    check_index(ray_root)
    return {
        "doc_ids_per_row_equal": same_ids,
        "max_abs_vector_diff": float(np.abs(a - b).max()) if a.shape == b.shape else None,
        "top10_identical_queries": f"{identical}/{len(got)}",
        "top10_overlap": round(float(overlap), 4),
        "check": "ok",
    }


def faiss_figures(n_add: int = 200_000, factory: str = "IVF1024,PQ48") -> dict[str, Any]:
    """What a 100M-passage cost model needs from FAISS, measured here: IVF-PQ train and add
    rates and bytes per vector (random unit 384-d vectors; the rates, not recall, matter)."""
    import faiss
    import numpy as np

    from searchpipe.index.faiss import make_faiss_index, train_size

    rng = np.random.default_rng(0)
    dim = 384
    index = make_faiss_index(factory, dim)
    sample = rng.standard_normal((train_size(factory, 10**8), dim), dtype=np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    t0 = time.perf_counter()
    index.train(sample)
    train_s = time.perf_counter() - t0
    vectors = rng.standard_normal((n_add, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    t0 = time.perf_counter()
    index.add(vectors)
    add_s = time.perf_counter() - t0
    ivf = faiss.extract_index_ivf(index)
    return {
        "factory": factory,
        "train_vectors": len(sample),
        "train_seconds": round(train_s, 1),
        "add_vectors_per_s": round(n_add / add_s),
        "bytes_per_vector": ivf.code_size + 8,  # PQ code + int64 id in its inverted list
        "faiss_threads": faiss.omp_get_max_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to run.")
    parser.add_argument(
        "--shard-rows", type=int, default=0, help="Passages per shard (0: one per ingest batch)."
    )
    parser.add_argument("--no-faiss", action="store_true", help="Skip the IVF-PQ figures.")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--faiss-only", action="store_true", help="Only the IVF-PQ figures.")
    parser.add_argument(
        "--synthetic",
        type=int,
        default=0,
        help="Synthetic documents with a tiny model (0: SciFact).",
    )
    parser.add_argument("--index-type", default="Flat", help="FAISS factory of every run.")
    parser.add_argument("--on-disk", action="store_true", help="An on-disk IVF index.")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: ENGINE:WORKERS:HOME
    args = parser.parse_args()
    if args.one:
        engine, workers, home = args.one.split(":", 2)
        faiss = {"index_type": args.index_type, "on_disk": args.on_disk}
        run = one_run(engine, int(workers), args.shard_rows, Path(home), args.synthetic, faiss)
        print(json.dumps(run))
        return
    if args.faiss_only:
        emit(faiss_figures(), args.json)
        return
    if not args.synthetic and not (SCIFACT / "corpus.jsonl").is_file():
        print(f"skipped: SciFact not found at {SCIFACT} (needs ../shared/data/scifact)")
        return
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    results: dict[str, Any] = {
        "corpus": f"{args.synthetic} synthetic docs, tiny model" if args.synthetic else "SciFact",
        "cpus": os.cpu_count(),
        "shard_rows": args.shard_rows or "one shard per ingest batch (default)",
        "faiss": args.index_type + (", on disk" if args.on_disk else ""),
        "loadavg_before": " ".join(load),
    }
    runs = [("local", 0)] + [("ray", int(w)) for w in args.workers.split(",") if w]
    with tempfile.TemporaryDirectory() as tmp:
        figures = {}
        if args.synthetic:  # made once, before any run is timed
            from scale import synthetic_corpus, tiny_model

            synthetic_corpus(Path(tmp) / f"corpus-{args.synthetic}.arrow", args.synthetic)
            tiny_model(Path(tmp) / "tiny-bert")
        for engine, workers in runs:
            home = Path(tmp) / f"{engine}-{workers}"
            log(f"scale_out: building {results['corpus']} on {engine} ({workers or '-'} workers)")
            out = subprocess.run(
                [sys.executable, __file__, "--one", f"{engine}:{workers}:{home}",
                 "--shard-rows", str(args.shard_rows), "--synthetic", str(args.synthetic),
                 "--index-type", args.index_type, *(["--on-disk"] if args.on_disk else [])],
                cwd=ROOT, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if out.returncode != 0:
                sys.exit(f"run {engine}:{workers} failed:\n{out.stderr[-3000:]}")
            run = json.loads(out.stdout.strip().splitlines()[-1])
            figures[f"{engine}-{workers}"] = run
            results[run["engine"]] = {k: v for k, v in run.items() if k not in ("engine", "index")}
        local_root = Path(figures["local-0"]["index"])
        for key, run in figures.items():
            if key != "local-0":
                results[f"{run['engine']} vs local"] = compare(
                    Path(run["index"]), local_root, args.synthetic
                )
        if not args.no_faiss:
            results["faiss (for the cost model)"] = faiss_figures()
        with open("/proc/loadavg") as f:
            results["loadavg_after"] = " ".join(f.read().split()[:3])
    emit(results, args.json)


if __name__ == "__main__":
    main()
