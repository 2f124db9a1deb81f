"""How a trained reranker is best used, measured on its dev slice and saved in its folder.

After training, the reranker is measured on the dev queries held out of its train split,
against the first stage it was mined from (the index it will serve, with default search
settings):

- the first stage alone;
- the reranker alone over the top 10, 20 and 50;
- blends of the two orders: weighted RRF of the reranker rank and the first-stage rank, and
  a weighted sum of the two scores, each min-max scaled within the query's head.

The best is written to ``searchpipe_rerank.json`` in the model folder, which the ``Rerank``
stage applies by default. The best must beat the first stage by ``MIN_GAIN`` and in a paired
randomization test that counts its being the best of the whole grid (``selection_p``). If no
reranked order beats the first stage on dev so, the record says
``"rerank": false``: the stage then leaves the first-stage order alone (and says so), so a
reranker that makes things worse is never applied without the user being told.

>>> choose_usage("models/reranker", index, "dev-queries.jsonl", "dev-qrels.tsv")  # doctest: +SKIP
{'rerank': True, 'depth': 20, 'blend': 1.0, ...}
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from searchpipe.eval.compare import selection_p
from searchpipe.models.crossencoder import USAGE_FILE
from searchpipe.training.sweep import MAX_P, MIN_GAIN, sweep

log = logging.getLogger("searchpipe")

DEPTHS = (10, 20, 50)
BLENDS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # first-stage weight; 0: the reranker alone
TIE = 0.002  # settings this close on dev count as equal: the cheaper one is chosen
METRIC = "ndcg@10"


def choose_usage(
    model_dir: str | Path,
    index: Any,
    queries: str | Path,
    qrels: str | Path,
    max_length: int | None = None,
    depths: tuple[int, ...] = DEPTHS,
    blends: tuple[float, ...] = BLENDS,
    min_gain: float = MIN_GAIN,
    cut_queries: bool = False,
) -> dict[str, Any]:
    """Measure the reranker in ``model_dir`` on dev, save and return its usage record.

    ``cut_queries``: the dev queries are pseudo-queries cut from the corpus; the reranker reads
    each candidate with the query's text taken out (``sweep.PairCache``).
    """
    kind = "hybrid" if "bm25" in index.manifest else "dense"
    result = sweep(
        index, queries, qrels, rerank=str(model_dir), retrievers=(kind,), rrf_ks=(60,),
        weights=((1.0, 1.0),), depths=(0, *depths), blends=blends, rerank_top=1,
        cut_queries=cut_queries, guard=False,
    )  # fmt: skip
    rows = result["rows"]
    first = next(r for r in rows if r["rerank_depth"] == 0)
    reranked = [r for r in rows if r["rerank_depth"] > 0]
    # the best on dev; among settings within TIE of it, the shallowest (fewest pairs to score)
    top = max(r[METRIC] for r in reranked)
    best = min(
        (r for r in reranked if r[METRIC] >= top - TIE),
        key=lambda r: (r["rerank_depth"], -r[METRIC]),
    )
    alone = {str(r["rerank_depth"]): r[METRIC] for r in reranked if r["rerank_blend"] == 0.0}
    gain = best[METRIC] - first[METRIC]
    per_query = result["per_query"]
    base = per_query[rows.index(first)]
    p = selection_p([per_query[rows.index(r)] for r in reranked], base, reranked.index(best))
    usage: dict[str, Any] = {
        "rerank": gain > min_gain and p < MAX_P,
        "p_value": round(p, 4),
        "depth": best["rerank_depth"],
        "blend": best["rerank_blend"],
        "fusion": best.get("rerank_fusion", "rrf"),
        "max_length": max_length,
        "metric": METRIC,
        "dev_queries": result["queries"],
        "dev": "pseudo-queries, cut out of the documents" if cut_queries else "judged queries",
        "first_stage": {"retriever": kind, METRIC: round(first[METRIC], 4)},
        "reranker_alone": {d: round(v, 4) for d, v in alone.items()},
        "best": {
            "depth": best["rerank_depth"],
            "blend": best["rerank_blend"],
            "fusion": best.get("rerank_fusion", "rrf"),
            METRIC: round(best[METRIC], 4),
        },
    }
    if usage["rerank"]:
        usage["reason"] = (
            f"on {result['queries']} dev queries, depth {best['rerank_depth']} blend "
            f"{best['rerank_blend']} ({best.get('rerank_fusion', 'rrf')}) scores {best[METRIC]:.4f} against the first stage's "
            f"{first[METRIC]:.4f} (paired p {p:.4f})"
        )
    elif gain > min_gain:
        usage["reason"] = (
            f"on {result['queries']} dev queries the best reranked order (depth "
            f"{best['rerank_depth']}, blend {best['rerank_blend']}) scores {best[METRIC]:.4f} "
            f"against the first stage's {first[METRIC]:.4f}, but the gain is not significant "
            f"(paired p {p:.4f} >= {MAX_P}): it could be noise of this dev slice"
        )
    else:
        usage["reason"] = (
            f"on {result['queries']} dev queries no reranked order beat the first stage by more "
            f"than {min_gain} {METRIC} (best {best[METRIC]:.4f} at depth {best['rerank_depth']}, "
            f"blend {best['rerank_blend']}; first stage {first[METRIC]:.4f})"
        )
    usage["table"] = [
        {k: r.get(k) for k in ("rerank_depth", "rerank_blend", "rerank_fusion", METRIC, "ms")}
        for r in rows
    ]
    path = Path(model_dir) / USAGE_FILE
    path.write_text(json.dumps(usage, indent=2))
    log.info("reranker usage: %s", usage["reason"])
    return usage
