"""Score runs against qrels with ranx (nDCG, MRR, recall, MAP).

Only queries that have judgements are scored; a judged query missing from the run scores
zero, as trec_eval does with ``-c``. Reading runs and qrels is ``eval.runs``; comparing runs
with significance tests is ``eval.compare``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from searchpipe.errors import InputError
from searchpipe.eval import runs

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "map")


def _ranx(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], name: str = "run"
) -> tuple[Any, Any]:
    from ranx import Qrels, Run

    judged = {q: docs for q, docs in run.items() if q in qrels}
    for q in qrels:  # judged but unanswered queries count as zeros
        judged.setdefault(q, {})
    return Qrels(qrels), Run(judged, name=name)


def evaluate(
    run: str | Path | dict,
    qrels: str | Path | dict,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    per_query: bool = False,
) -> dict[str, Any]:
    """Score a run; returns ``{metric: value, ..., "queries": n}`` (and ``per_query``).

    >>> evaluate({"q1": {"d1": 2.0, "d2": 1.0}}, {"q1": {"d2": 1}}, metrics=("mrr@10",))
    {'mrr@10': 0.5, 'queries': 1}
    """
    from ranx import evaluate as ranx_evaluate

    qrels_d = runs.read_qrels(qrels) if not isinstance(qrels, dict) else qrels
    run_d = runs.read_run(run) if not isinstance(run, dict) else run
    rq, rr = _ranx(qrels_d, run_d)
    try:
        with warnings.catch_warnings():  # numba's note on a uint64 cast inside ranx
            warnings.simplefilter("ignore")
            scores = ranx_evaluate(rq, rr, list(metrics), make_comparable=True)
    except (ValueError, KeyError) as e:
        raise InputError(f"cannot compute {', '.join(metrics)}: {e}") from None
    if isinstance(scores, float):
        scores = {metrics[0]: scores}
    result: dict[str, Any] = {m: round(float(v), 6) for m, v in scores.items()}
    result["queries"] = len(qrels_d)
    if per_query:
        result["per_query"] = {m: {q: float(v) for q, v in rr.scores[m].items()} for m in metrics}
    return result
