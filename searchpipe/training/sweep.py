"""Sweep search settings on a dev qrels file (``searchpipe tune``): fusion method, weights,
``rrf_k``, rerank depth and blend.

Each retriever runs once over the dev queries (top ``k``, built by the one query builder),
each reranker pair is scored once (cached by query and doc), and every setting of the grid is
then evaluated from those: the fused lists are recomputed with the same ``fuse_hits`` the
``Fuse`` stage uses, the blended rerank order with the same ``blended`` the ``Rerank`` stage
uses. Latency per setting is the measured batch cost per query of the parts it uses (embed +
dense search, BM25 search, fusion, and the reranker's measured cost per pair times the depth).

>>> result = sweep("scifact", "dev-queries.jsonl", "dev-qrels.tsv")  # doctest: +SKIP
>>> print(format_table(result["rows"]))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from searchpipe import columns as C
from searchpipe.errors import InputError
from searchpipe.eval.compare import selection_p
from searchpipe.index.store import rows_to_doc_ids

log = logging.getLogger("searchpipe")

RRF_KS = (10, 30, 60, 100)
WEIGHTS = ((1.0, 1.0), (1.0, 0.5), (0.5, 1.0), (1.0, 0.25), (0.25, 1.0))
DEPTHS = (0, 20, 50, 100)
BLENDS = (0.0, 0.5, 1.0, 2.0)  # first-stage weight in the reranked head; see ``reranked``
METRIC = "ndcg@10"
MIN_GAIN = 0.002  # nDCG@10 a reranked order must win by on dev (below it: noise)
MAX_P = 0.05  # and hold in a paired test over the dev queries of the best of the grid (max-T)
SAME_COST = 1.25  # settings within 25% of the cheapest one's ms count as costing the same


class FirstStage:
    """Dense and BM25 hits of a query set over one index, with their cost per query.

    On an index of passages it does what the search path does: each retriever fetches
    passages (``passage_depth`` of them), they are fused as passages, and then each document
    keeps its best passage. Fusing per document instead would sum a document's dense and BM25
    ranks even when they reached it through different passages, which search never does.
    """

    def __init__(self, index: Any, queries: pa.Table, k: int, model: str | None = None) -> None:
        from searchpipe.api import Searcher
        from searchpipe.api.query import passage_depth

        self.index = index
        self.queries = queries
        self.k = k
        self.ms: dict[str, float] = {}
        self.hits: dict[str, pa.RecordBatch] = {}
        n = max(queries.num_rows, 1)
        kinds = ["dense", "bm25"] if "bm25" in index.manifest else ["dense"]
        self.chunked = bool(index.chunked)
        self.rows = passage_depth(index, k) if self.chunked else k
        for kind in kinds:
            searcher = Searcher(
                index, retriever=kind, k=self.rows, candidates=self.rows, model=model,
                passages=self.chunked,
            )  # fmt: skip
            searcher.search_batch(queries.slice(0, 1))  # first calls pay one-off setup
            t0 = time.perf_counter()
            hits = searcher.search_batch(queries)
            self.ms[kind] = 1000 * (time.perf_counter() - t0) / n
            self.hits[kind] = hits.combine_chunks().to_batches()[0]

    def run(
        self,
        retriever: str,
        fusion: str = "rrf",
        rrf_k: int = 60,
        weights: tuple[float, float] = (1.0, 1.0),
    ) -> tuple[dict[str, list[int]], dict[str, list[float]], float]:
        """Ranked doc rows and scores per query for one first-stage setting, and its ms/query."""
        from searchpipe.stages.aggregate import best_passages
        from searchpipe.stages.fuse import fuse_hits

        if retriever in ("dense", "bm25"):
            hits = self.hits[retriever]
            q = hits.column(C.QUERY_ID).to_pylist()
            rows = hits.column(C.DOC_ROW).to_numpy()
            scores = hits.column(C.SCORE).to_numpy(zero_copy_only=False)
            ms = self.ms[retriever]
        else:
            t0 = time.perf_counter()
            qi, rows, scores, _ = fuse_hits(
                [self.hits["dense"], self.hits["bm25"]], list(weights), fusion, rrf_k, self.rows
            )
            order = list(
                dict.fromkeys(
                    self.hits["dense"].column(C.QUERY_ID).to_pylist()
                    + self.hits["bm25"].column(C.QUERY_ID).to_pylist()
                )
            )
            q = [order[i] for i in qi]
            ms = (
                self.ms["dense"]
                + self.ms["bm25"]
                + 1000 * (time.perf_counter() - t0) / max(self.queries.num_rows, 1)
            )
        scores = np.asarray(scores)
        if self.chunked:  # each document once, as its best passage (hits come best first)
            docs = rows_to_doc_ids(self.index, rows)
            keep = best_passages(pa.array(q), docs, np.arange(len(q)))
            q, rows, scores = [q[i] for i in keep], rows[keep], scores[keep]
        ranked: dict[str, list[int]] = {}
        scored: dict[str, list[float]] = {}
        for qid, r, s in zip(q, rows.tolist(), scores.tolist(), strict=True):
            if len(ranked.setdefault(qid, [])) < self.k:
                ranked[qid].append(int(r))
                scored.setdefault(qid, []).append(float(s))
        return ranked, scored, ms


class PairCache:
    """Cross-encoder scores of (query, doc row) pairs, each pair scored once.

    ``cut_queries``: pseudo-queries were cut from the documents, so each document is scored
    with the query's text taken out of it, as its positive was shown in training; otherwise a
    reranker would find its query by string match and look far better on dev than on real
    queries.
    """

    def __init__(
        self, scorer: Any, index: Any, query_text: dict[str, str], cut_queries: bool = False
    ) -> None:
        self.scorer = scorer
        self.cut_queries = cut_queries
        self.index = index
        self.query_text = query_text
        self.scores: dict[tuple[str, int], float] = {}
        self.seconds = 0.0
        self.pairs = 0
        scorer.score(["warm up"], ["the first call pays one-off setup"])

    def score(self, wanted: dict[str, list[int]]) -> None:
        todo = [(q, r) for q, rows in wanted.items() for r in rows if (q, r) not in self.scores]
        if not todo:
            return
        texts = self.index.texts([r for _, r in todo])
        t0 = time.perf_counter()
        queries = [self.query_text[q] for q, _ in todo]
        docs = [texts[r] for _, r in todo]
        if self.cut_queries:
            docs = [d.replace(q, " ") for q, d in zip(queries, docs, strict=True)]
        scores = self.scorer.score(queries, docs)
        self.seconds += time.perf_counter() - t0
        self.pairs += len(todo)
        self.scores.update(zip(todo, scores.tolist(), strict=True))

    @property
    def ms_per_pair(self) -> float:
        return 1000 * self.seconds / max(self.pairs, 1)


def reranked(
    ranked: dict[str, list[int]],
    cache: PairCache,
    depth: int,
    blend: float = 0.0,
    fusion: str = "rrf",
    scores: dict[str, list[float]] | None = None,
) -> dict[str, list[int]]:
    """Each query's top ``depth`` re-ordered as the ``Rerank`` stage orders it, the tail kept.

    ``blend`` > 0 keeps some of the first stage's opinion, fusing ranks (``fusion="rrf"``,
    ``stages.rerank.blended``) or min-max scaled scores (``"score"``, which needs the
    first-stage ``scores``).
    """
    from searchpipe.stages.rerank import blended, minmax

    cache.score({q: rows[:depth] for q, rows in ranked.items()})
    out = {}
    for q, rows in ranked.items():
        head = sorted(rows[:depth], key=lambda r: -cache.scores[(q, r)])
        first = {r: i + 1 for i, r in enumerate(rows[:depth])}
        if blend > 0 and fusion == "score":
            assert scores is not None, "a score blend needs the first-stage scores"
            ours = minmax(
                np.array([cache.scores[(q, r)] for r in rows[:depth]]), np.zeros(len(first), int)
            )
            theirs = minmax(np.array(scores[q][:depth]), np.zeros(len(first), int))
            value = {r: ours[i] + blend * theirs[i] for i, r in enumerate(rows[:depth])}
            head = sorted(rows[:depth], key=lambda r: (-value[r], first[r]))
        elif blend > 0:
            fused = blended(
                np.arange(1, len(head) + 1, dtype=np.float64),
                np.array([first[r] for r in head], dtype=np.float64),
                blend,
            )
            head = [
                head[i] for i in sorted(range(len(head)), key=lambda i: (-fused[i], first[head[i]]))
            ]
        out[q] = head + rows[depth:]
    return out


def as_run(ranked: dict[str, list[int]], doc_ids: list[str]) -> dict[str, dict[str, float]]:
    """Rank lists as a ranx-style run (score = descending rank)."""
    return {
        q: {doc_ids[r]: float(len(rows) - i) for i, r in enumerate(rows)}
        for q, rows in ranked.items()
    }


def sweep(
    index: str | Any,
    queries: str | Path,
    qrels: str | Path,
    rerank: str | None = None,
    k: int = 100,
    rrf_ks: tuple[int, ...] = RRF_KS,
    weights: tuple[tuple[float, float], ...] = WEIGHTS,
    depths: tuple[int, ...] = DEPTHS,
    model: str | None = None,
    max_ms: float | None = None,
    retrievers: tuple[str, ...] = ("dense", "bm25", "hybrid"),
    rerank_top: int = 3,
    blends: tuple[float, ...] = BLENDS,
    rerank_fusions: tuple[str, ...] = ("rrf", "score"),
    cache: PairCache | None = None,
    index_root: str | Path | None = None,
    cut_queries: bool = False,
    guard: bool = True,
) -> dict[str, Any]:
    """Evaluate the grid on ``qrels`` and choose the best nDCG@10 (within ``max_ms`` if given;
    of settings within 0.002 of it, the cheapest: ``_best``).

    With ``guard``, a reranked setting is chosen over the best first stage only if it wins by
    ``MIN_GAIN`` and in a paired test that counts its being the best of the reranked grid
    (``eval.compare.selection_p``, p < ``MAX_P``); otherwise the first stage is chosen and
    ``rerank_check`` says why.

    Returns ``{"rows": [...], "best": row, "search": {SearchConfig fields}, "rerank_check"}``.
    """
    from searchpipe.eval.metrics import evaluate
    from searchpipe.eval.runs import read_qrels
    from searchpipe.index import Index
    from searchpipe.stages.ingest import read_queries

    idx = index if not isinstance(index, str) else Index.open(index, index_root)
    judged = read_qrels(qrels)
    table = read_queries(queries)
    keep = pa.array([q in judged for q in table.column(C.QUERY_ID).to_pylist()])
    table = table.filter(keep)
    # scored over the queries asked, not every query the qrels judge (a cut dev slice keeps
    # the whole qrels file: the rest would count as zeros)
    asked = set(table.column(C.QUERY_ID).to_pylist())
    judged = {q: rel for q, rel in judged.items() if q in asked}
    if table.num_rows == 0:
        raise InputError(f"no query of {queries} is judged in {qrels}; pass the matching dev files")
    query_text = dict(
        zip(table.column(C.QUERY_ID).to_pylist(), table.column(C.TEXT).to_pylist(), strict=True)
    )
    doc_ids = idx.docs.column(C.DOC_ID).to_pylist()
    first = FirstStage(idx, table, k, model)
    settings: list[dict[str, Any]] = [{"retriever": "dense"}]
    if "bm25" in first.hits:
        settings.append({"retriever": "bm25"})
        settings += [
            {
                "retriever": "hybrid",
                "fusion": "rrf",
                "rrf_k": rk,
                "dense_weight": w[0],
                "bm25_weight": w[1],
            }
            for rk, w in product(rrf_ks, weights)
        ]
        settings += [
            {"retriever": "hybrid", "fusion": "weighted", "dense_weight": w[0], "bm25_weight": w[1]}
            for w in weights
        ]
    settings = [s for s in settings if s["retriever"] in retrievers]
    if not settings:
        raise InputError(f"no retriever of {retrievers} is available on this index")
    if rerank and cache is None:
        from searchpipe.models.crossencoder import CrossEncoderScorer

        cache = PairCache(CrossEncoderScorer(rerank), idx, query_text, cut_queries)
    elif cache is not None:
        cache.query_text.update(query_text)
    if cache is None:
        depths = (0,)
    rows: list[dict[str, Any]] = []
    per_query: list[dict[str, float]] = []  # each row's nDCG@10 per query, for paired tests
    for s in settings:
        ranked, _, ms = first.run(
            s["retriever"],
            s.get("fusion", "rrf"),
            s.get("rrf_k", 60),
            (s.get("dense_weight", 1.0), s.get("bm25_weight", 1.0)),
        )
        base = evaluate(as_run(ranked, doc_ids), judged, (METRIC, "recall@100"), per_query=True)
        per_query.append(base["per_query"][METRIC])
        rows.append(
            {
                **s,
                "rerank_depth": 0,
                "rerank_blend": 0.0,
                METRIC: base[METRIC],
                "recall@100": base["recall@100"],
                "ms": ms,
            }
        )
    if cache is not None:
        # rerank only the first stages worth it: the best few by nDCG@10, plus each retriever
        top = sorted(rows, key=lambda r: -r[METRIC])[:rerank_top]
        kinds = {r["retriever"]: r for r in sorted(rows, key=lambda r: r[METRIC])}
        for s in {id(r): r for r in [*top, *kinds.values()]}.values():
            ranked, scored, ms = first.run(
                s["retriever"],
                s.get("fusion", "rrf"),
                s.get("rrf_k", 60),
                (s.get("dense_weight", 1.0), s.get("bm25_weight", 1.0)),
            )
            grid = [
                (depth, blend, fusion)
                for depth, blend, fusion in product(
                    (d for d in depths if d > 0), blends, rerank_fusions
                )
                if blend > 0 or fusion == rerank_fusions[0]  # blend 0: the reranker alone, once
            ]
            for depth, blend, fusion in grid:
                order = reranked(ranked, cache, depth, blend, fusion, scored)
                res = evaluate(
                    as_run(order, doc_ids), judged, (METRIC, "recall@100"), per_query=True
                )
                per_query.append(res["per_query"][METRIC])
                rows.append(
                    {
                        **{
                            k_: v
                            for k_, v in s.items()
                            if k_ not in (METRIC, "recall@100", "ms", "rerank_depth")
                        },
                        "rerank_depth": depth,
                        "rerank_blend": blend,
                        "rerank_fusion": fusion,
                        METRIC: res[METRIC],
                        "recall@100": res["recall@100"],
                        "ms": ms + depth * cache.ms_per_pair,
                    }
                )
    allowed = [i for i, r in enumerate(rows) if max_ms is None or r["ms"] <= max_ms]
    allowed = allowed or list(range(len(rows)))
    best, check = _best(rows, allowed), None
    if guard:
        best, check = guard_rerank(rows, per_query, allowed, best)
    return {
        "rows": rows,
        "best": rows[best],
        "rerank_check": check,
        "search": search_section(rows[best], rerank, k),
        "queries": table.num_rows,
        "per_query": per_query,
    }


def guard_rerank(
    rows: list[dict[str, Any]], per_query: list[dict[str, float]], among: list[int], best: int
) -> tuple[int, dict[str, Any] | None]:
    """Keep ``best`` if it is a first stage, or a reranked setting that beats the best first
    stage of ``among`` by ``MIN_GAIN`` and in the max-T paired test over the reranked
    settings (``selection_p``, p < ``MAX_P``); otherwise that first stage. Returns the row
    and the check made (None when there was nothing to check)."""
    plain = [i for i in among if rows[i]["rerank_depth"] == 0]
    if rows[best]["rerank_depth"] == 0 or not plain:
        return best, None
    plain_best = _best(rows, plain)
    gain = rows[best][METRIC] - rows[plain_best][METRIC]
    reranked = [i for i in among if rows[i]["rerank_depth"] > 0]
    p = selection_p([per_query[i] for i in reranked], per_query[plain_best], reranked.index(best))
    check: dict[str, Any] = {"gain": round(gain, 4), "p_value": round(p, 4), "rerank": True}
    if gain > MIN_GAIN and p < MAX_P:
        return best, check
    check["rerank"] = False
    check["reason"] = (
        f"the best reranked setting scores {rows[best][METRIC]:.4f} against the best first "
        f"stage's {rows[plain_best][METRIC]:.4f} on {len(per_query[plain_best])} dev queries "
        f"(paired p {p:.4f}, best of {len(reranked)}): not a clear win, so the first stage "
        "is chosen"
    )
    log.info("sweep: %s", check["reason"])
    return plain_best, check


def _best(rows: list[dict[str, Any]], among: list[int]) -> int:
    """The row of ``among`` with the best nDCG@10; among those within 0.002 of it, the
    cheapest, where costs within ``SAME_COST`` of the cheapest count as equal and the best
    nDCG@10 of those wins.

    The fusion variants of one retriever pair cost the same but for the timing noise of their
    fusion step: chosen by measured ms alone, two sweeps of the same embedder picked different
    fusions (SciFact test 0.7441 and 0.7479).

    >>> rows = [{"ndcg@10": 0.700, "ms": 10.0}, {"ndcg@10": 0.701, "ms": 10.4},
    ...         {"ndcg@10": 0.7015, "ms": 30.0}, {"ndcg@10": 0.690, "ms": 1.0}]
    >>> _best(rows, [0, 1, 2, 3])
    1
    """
    top = max(rows[i][METRIC] for i in among)
    near = [i for i in among if rows[i][METRIC] >= top - 0.002]
    cheapest = min(rows[i]["ms"] for i in near)
    same = [i for i in near if rows[i]["ms"] <= cheapest * SAME_COST]
    return max(same, key=lambda i: (rows[i][METRIC], -rows[i]["ms"]))


def search_section(row: dict[str, Any], rerank: str | None, candidates: int) -> dict[str, Any]:
    """The ``search:`` settings (``SearchSettings`` fields) of a swept row."""
    out: dict[str, Any] = {"retriever": row["retriever"], "candidates": candidates}
    for key in ("fusion", "rrf_k", "dense_weight", "bm25_weight"):
        if key in row:
            out[key] = row[key]
    if rerank and row["rerank_depth"] > 0:
        out["rerank"] = str(Path(rerank).resolve()) if Path(rerank).is_dir() else str(rerank)
        out["rerank_depth"] = row["rerank_depth"]
        out["rerank_blend"] = row.get("rerank_blend", 0.0)  # explicit: it wins over the model's
        out["rerank_fusion"] = row.get("rerank_fusion", "rrf")
    return out


def format_table(rows: list[dict[str, Any]], best: dict[str, Any] | None = None) -> str:
    """Quality against latency, best first."""
    head = f"{'retriever':<9} {'fusion':<8} {'rrf_k':>5} {'w_dense':>7} {'w_bm25':>7} {'depth':>5} {'blend':>5} {'by':>5} {'ndcg@10':>8} {'R@100':>7} {'ms/q':>8}"
    lines = [head]
    for r in sorted(rows, key=lambda r: (-r[METRIC], r["ms"])):
        mark = "  <- chosen" if r is best else ""
        lines.append(
            f"{r['retriever']:<9} {r.get('fusion', '-'):<8} {r.get('rrf_k', '-')!s:>5} "
            f"{r.get('dense_weight', '-')!s:>7} {r.get('bm25_weight', '-')!s:>7} "
            f"{r['rerank_depth']:>5} {r.get('rerank_blend', 0.0):>5} {r.get('rerank_fusion', '-'):>5} {r[METRIC]:>8.4f} {r['recall@100']:>7.4f} {r['ms']:>8.1f}{mark}"
        )
    return "\n".join(lines)


def write_config(search: dict[str, Any], path: str | Path, queries: str | Path, index: str) -> Path:
    """Save the chosen settings as a job file: a ``search:`` section (``SearchConfig``) that
    ``searchpipe search --config FILE`` and ``searchpipe run FILE`` apply as written.

    Paths are absolute, since a config's relative paths are read from its own folder; the run
    file ``output`` is a placeholder beside the config.
    """
    import yaml

    from searchpipe.config import SearchConfig, validate

    section = {
        "index": index,
        "queries": str(Path(queries).resolve()),
        "output": "run.arrow",
        **search,
    }
    validate(section, SearchConfig, source="tuned settings")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# written by searchpipe tune: the best nDCG@10 on the dev qrels (the cheapest within 0.002)\n"
        + yaml.safe_dump({"search": section}, sort_keys=False),
        encoding="utf-8",
    )
    return path


def plot(rows: list[dict[str, Any]], best: dict[str, Any], path: str | Path) -> Path:
    """A PNG of quality against ms/query for every swept setting, the chosen one marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for kind, marker in (("dense", "o"), ("bm25", "s"), ("hybrid", "^")):
        for reranked_ in (False, True):
            pts = [
                r for r in rows if r["retriever"] == kind and (r["rerank_depth"] > 0) == reranked_
            ]
            if pts:
                ax.scatter(
                    [r["ms"] for r in pts],
                    [r[METRIC] for r in pts],
                    marker=marker,
                    alpha=0.7,
                    label=f"{kind}{' + rerank' if reranked_ else ''}",
                )
    ax.scatter([best["ms"]], [best[METRIC]], s=220, facecolors="none", edgecolors="red", lw=2)
    ax.annotate("chosen", (best["ms"], best[METRIC]), xytext=(8, -14), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("ms per query (batch)")
    ax.set_ylabel(f"{METRIC} (dev)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
