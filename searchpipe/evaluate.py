"""Evaluate runs against qrels with ranx (nDCG, MRR, recall, MAP; paired significance tests).

Runs are read from our Arrow run files (``query_id, doc_id, rank, score`` ...) or TREC run
files; qrels from BEIR TSV (``query-id corpus-id score`` with a header) or TREC qrels
(``qid 0 docid rel``). Only queries that have judgements are scored; a judged query missing
from the run scores zero, as trec_eval does with ``-c``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from searchpipe import columns as C
from searchpipe.errors import InputError

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "map")


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Judgements ``{query_id: {doc_id: relevance}}`` from a BEIR TSV or TREC qrels file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"qrels {path} is a folder; pass a file such as {path}/qrels/test.tsv")
    if not path.is_file():
        raise InputError(f"qrels file {path} does not exist")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise InputError(
                    f"{path}:{lineno}: bytes are not UTF-8; re-encode the file as UTF-8"
                ) from None
            if not line:
                continue
            parts = line.split()
            if lineno == 1 and parts[-1].lower() in ("score", "relevance", "rel", "label"):
                continue  # BEIR header
            if len(parts) == 3:
                qid, did, rel = parts
            elif len(parts) == 4:
                qid, _, did, rel = parts
            else:
                raise InputError(
                    f"{path}:{lineno}: expected 'query-id corpus-id score' (BEIR) or 'qid 0 docid rel' (TREC), "
                    f"got {len(parts)} fields"
                )
            try:
                qrels.setdefault(qid, {})[did] = int(float(rel))
            except ValueError:
                raise InputError(f"{path}:{lineno}: relevance {rel!r} is not a number") from None
    if not qrels:
        raise InputError(f"qrels file {path} has no judgements")
    return qrels


def read_run(path: str | Path) -> dict[str, dict[str, float]]:
    """A run ``{query_id: {doc_id: score}}`` from an Arrow run file or a TREC run file."""
    from searchpipe.stages.write import output_format, run_scores

    path = Path(path)
    if not path.is_file():
        raise InputError(f"run file {path} does not exist")
    fmt = (
        "trec" if path.suffix.lower() not in (".arrow", ".ipc", ".feather") else output_format(path)
    )
    run: dict[str, dict[str, float]] = {}
    if fmt == "arrow":
        import pyarrow as pa
        import pyarrow.ipc as ipc

        try:
            table = ipc.open_file(pa.memory_map(str(path))).read_all()
        except pa.ArrowInvalid as e:
            raise InputError(f"{path} is not an Arrow run file ({e})") from None
        missing = [
            c for c in (C.QUERY_ID, C.DOC_ID, C.SCORE, C.RANK) if c not in table.schema.names
        ]
        if missing:
            raise InputError(
                f"{path} lacks column(s) {', '.join(missing)}; is it a run written by searchpipe search?"
            )
        scores = run_scores(table.combine_chunks())
        for q, d, s in zip(
            table.column(C.QUERY_ID).to_pylist(),
            table.column(C.DOC_ID).to_pylist(),
            scores,
            strict=True,
        ):
            run.setdefault(q, {})[d] = float(s)
        return run
    with open(path, encoding="utf-8", errors="strict") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise InputError(
                    f"{path}:{lineno}: a TREC run line has 6 fields (qid Q0 docid rank score tag), got {len(parts)}"
                )
            try:
                run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
            except ValueError:
                raise InputError(f"{path}:{lineno}: score {parts[4]!r} is not a number") from None
    return run


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

    qrels_d = read_qrels(qrels) if not isinstance(qrels, dict) else qrels
    run_d = read_run(run) if not isinstance(run, dict) else run
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
