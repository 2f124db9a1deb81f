"""Compare two or more runs on the same qrels with a paired significance test (ranx ``compare``);
and ``selection_p``, the test for the best of many settings chosen on the same queries.

The first run is the baseline; every other run is tested against it per metric with a
two-sided paired Student's t-test (``student``) or Fisher's randomization test (``fisher``),
both computed by ranx over the per-query scores. Judged queries that a run does not answer
count as zeros, as in ``searchpipe.evaluate``.

>>> a = {"q1": {"d1": 2.0, "d2": 1.0}, "q2": {"d3": 1.0}}
>>> r = compare_runs({"a": a, "b": a}, {"q1": {"d1": 1}, "q2": {"d3": 1}}, ("ndcg@10",))
>>> r["comparisons"][0]["p_value"], r["comparisons"][0]["significant"]
(1.0, False)
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from searchpipe.errors import InputError
from searchpipe.eval.metrics import DEFAULT_METRICS, _ranx
from searchpipe.eval.runs import Run, read_qrels, read_run

STAT_TESTS = ("student", "fisher")
PERMUTATIONS = 10_000  # sign flips of selection_p


def _named_runs(runs: Any) -> dict[str, Run]:
    """``{name: run}`` from a mapping or a sequence of run files / run dicts."""
    items = runs.items() if isinstance(runs, dict) else ((str(r), r) for r in runs)
    named: dict[str, Run] = {}
    for name, run in items:
        if str(name) in named:
            raise InputError(f"run {name} is given twice; compare distinct runs")
        named[str(name)] = read_run(run) if isinstance(run, str | Path) else run
    if len(named) < 2:
        raise InputError(f"comparing needs at least two runs, got {len(named)}")
    return named


def compare_runs(
    runs: Any,
    qrels: str | Path | dict[str, dict[str, int]],
    metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS,
    stat_test: str = "student",
    max_p: float = 0.05,
    n_permutations: int = 1000,
    seed: int = 42,
) -> dict[str, Any]:
    """Score each run and test every later run against the first (the baseline).

    ``runs``: a ``{name: run}`` mapping or a list of run files (names are the paths); a run is
    a file (Arrow or TREC) or a ``{query_id: {doc_id: score}}`` dict. Returns::

        {"stat_test": ..., "max_p": ..., "metrics": [...], "queries": n, "baseline": name,
         "scores": {name: {metric: mean}},
         "comparisons": [{"run", "baseline", "metric", "delta", "p_value", "significant",
                          "wins", "ties", "losses"}, ...]}
    """
    if stat_test not in STAT_TESTS:
        raise InputError(f"stat_test {stat_test!r} is not one of {', '.join(STAT_TESTS)}")
    if not 0 < max_p < 1:
        raise InputError(f"max_p must be between 0 and 1, got {max_p}")
    import numpy as np
    from ranx import compare

    qrels_d = read_qrels(qrels) if not isinstance(qrels, dict) else qrels
    named = _named_runs(runs)
    metrics = list(metrics)
    ranx_qrels = None
    ranx_runs = []
    for name, run in named.items():
        ranx_qrels, rr = _ranx(qrels_d, run, name=name)
        ranx_runs.append(rr)
    try:
        with warnings.catch_warnings():  # numba's note on a uint64 cast inside ranx
            warnings.simplefilter("ignore")
            report = compare(
                ranx_qrels,
                ranx_runs,
                metrics,
                stat_test=stat_test,
                max_p=max_p,
                n_permutations=n_permutations,
                random_seed=seed,
                make_comparable=True,
                rounding_digits=6,
            )
    except (ValueError, KeyError) as e:
        raise InputError(f"cannot compare on {', '.join(metrics)}: {e}") from None

    names = list(named)
    baseline = names[0]
    scores = {n: {m: round(float(report.results[n][m]), 6) for m in metrics} for n in names}
    comparisons = []
    for name in names[1:]:
        for m in metrics:
            p = float(report.comparisons[frozenset([baseline, name])][m]["p_value"])
            wtl = report.win_tie_loss[(name, baseline)][m]
            if not np.isfinite(p):  # identical per-query scores: no difference to test
                p = 1.0
            comparisons.append(
                {
                    "run": name,
                    "baseline": baseline,
                    "metric": m,
                    "delta": round(scores[name][m] - scores[baseline][m], 6),
                    "p_value": p,
                    "significant": bool(p < max_p),
                    "wins": wtl["W"],
                    "ties": wtl["T"],
                    "losses": wtl["L"],
                }
            )
    return {
        "stat_test": stat_test,
        "max_p": max_p,
        "metrics": metrics,
        "queries": len(qrels_d),
        "baseline": baseline,
        "scores": scores,
        "comparisons": comparisons,
    }


def format_comparison(result: dict[str, Any], width: int = 40) -> str:
    """A plain-text table: one row per run, each metric with its delta, p-value and a ``*``
    where the difference to the baseline is significant."""
    metrics = result["metrics"]
    by_run: dict[str, dict[str, dict[str, Any]]] = {}
    for c in result["comparisons"]:
        by_run.setdefault(c["run"], {})[c["metric"]] = c
    cell = 26
    lines = [f"{'run':<{width}}" + "".join(f"{m:>{cell}}" for m in metrics)]
    for name, scores in result["scores"].items():
        row = f"{name[-width:]:<{width}}"
        for m in metrics:
            c = by_run.get(name, {}).get(m)
            if c is None:
                text = f"{scores[m]:.4f} (baseline)"
            else:
                star = "*" if c["significant"] else " "
                text = f"{scores[m]:.4f} {c['delta']:+.4f} p={c['p_value']:.3f}{star}"
            row += f"{text:>{cell}}"
        lines.append(row)
    test = {"student": "paired t-test", "fisher": "Fisher's randomization test"}[
        result["stat_test"]
    ]
    lines.append(
        f"({result['queries']} judged queries; * = differs from {result['baseline']} "
        f"at p < {result['max_p']}, {test})"
    )
    return "\n".join(lines)


def selection_p(
    candidates: list[dict[str, float]], base: dict[str, float], chosen: int, seed: int = 0
) -> float:
    """One-sided p-value that ``candidates[chosen]`` beats ``base`` (per-query scores of the
    same queries), counting that it was chosen out of all ``candidates``: Westfall and
    Young's max-T, a paired randomization test of the largest t statistic. Each permutation
    flips the sign of each query's differences in every candidate at once and keeps the
    largest paired t over the candidates; p is the share of permutations that reach the
    chosen one's t.

    With one candidate this is the plain paired randomization test. Testing the chosen one
    alone, as if it had not been picked out of 30-odd settings on the same queries, let a
    SciFact reranker through at p 0.03 on its dev slice that then lost on test. The statistic
    is the t, not the mean gain: a grid mixes settings whose per-query differences spread
    very differently (a SciFact reranker alone at depth 50 had a standard deviation of 0.33,
    a gentle blend at depth 10 one of 0.12), and the maximum of raw mean gains under the null
    is set by the widest of them, which buried a steady blend's win (p 0.30 by mean gains,
    0.06 by t).

    >>> selection_p([{"a": 1.0, "b": 1.0, "c": 1.0}], {"a": 0.0, "b": 0.0, "c": 0.0}, 0) < 0.2
    True
    """
    import numpy as np

    queries = sorted(set(base).union(*candidates))
    n = len(queries)
    d = np.asarray([[c.get(q, 0.0) - base.get(q, 0.0) for q in queries] for c in candidates])
    if not d[chosen].any() or n < 2:
        return 1.0
    squares = (d**2).sum(axis=1)  # unchanged by sign flips

    def t(means: Any) -> Any:
        var = np.maximum(squares - n * means**2, 0.0) / (n - 1)
        return means / np.sqrt(np.maximum(var, 1e-24) / n)

    observed = float(t(d.mean(axis=1))[chosen])
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(PERMUTATIONS, n))
    best_null = t(signs @ d.T / n).max(axis=1)
    return float((best_null >= observed - 1e-9 * abs(observed)).mean())
