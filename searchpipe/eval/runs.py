"""Run files and qrels: what searchpipe writes and reads back to score.

Runs are our Arrow run files (``query_id, doc_id, rank, score`` ...), JSON Lines or TREC run
files (``qid Q0 docid rank score tag``); qrels are BEIR TSV (``query-id corpus-id score`` with a
header) or TREC qrels (``qid 0 docid rel``). Every error names the file and line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from searchpipe import columns as C
from searchpipe.errors import InputError

Run = dict[str, dict[str, float]]  # {query_id: {doc_id: score}}


def output_format(path: Path) -> str:
    ext = path.suffix.lower()
    formats = {
        ".arrow": "arrow",
        ".ipc": "arrow",
        ".feather": "arrow",
        ".parquet": "parquet",
        ".jsonl": "jsonl",
        ".trec": "trec",
        ".run": "trec",
        ".txt": "trec",
    }
    if ext not in formats:
        raise InputError(
            f"cannot tell the output format of {path}; use .arrow, .parquet, .jsonl or .trec"
        )
    return formats[ext]


def run_scores(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    """One score per row that orders each query's hits exactly as ``rank`` does.

    For a reranked run, reranked hits keep their cross-encoder score and the hits below the
    rerank depth get scores below the lowest reranked one, in first-stage order; when the
    head was ordered by a blend of both ranks, the score is minus the rank. Evaluation
    and TREC output both use this, so a TREC file scores the same as the Arrow run.
    """
    if C.RERANK_SCORE not in batch.schema.names:
        return batch.column(C.SCORE).to_numpy(zero_copy_only=False).astype(np.float64)
    rerank = batch.column(C.RERANK_SCORE).to_numpy(zero_copy_only=False).astype(np.float64)
    ranks = batch.column(C.RANK).to_numpy(zero_copy_only=False).astype(np.float64)
    qids = batch.column(C.QUERY_ID).to_numpy(zero_copy_only=False)
    scores = rerank.copy()
    tail = np.isnan(rerank)
    _, group = np.unique(qids, return_inverse=True)
    if tail.any():
        floor = np.full(group.max() + 1, np.inf)
        np.minimum.at(floor, group[~tail], rerank[~tail])
        floor[np.isinf(floor)] = 0.0
        scores[tail] = floor[group[tail]] - ranks[tail] * 1e-3 - 1.0
    # a blended rerank orders its head by both ranks, not by rerank_score: then the rank itself
    # is the only score that orders the hits as the run does
    by_rank = np.lexsort((ranks, group))
    same_query = group[by_rank][1:] == group[by_rank][:-1]
    if np.any(same_query & (np.diff(scores[by_rank]) > 0)):
        return -ranks
    return scores


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


def read_run(path: str | Path) -> Run:
    """A run ``{query_id: {doc_id: score}}`` from a run file: Arrow, Parquet, JSONL or TREC."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"run file {path} does not exist")
    tabular = (".arrow", ".ipc", ".feather", ".parquet", ".jsonl")
    fmt = "trec" if path.suffix.lower() not in tabular else output_format(path)
    run: Run = {}
    if fmt != "trec":
        import pyarrow as pa
        import pyarrow.ipc as ipc
        import pyarrow.json as pj
        import pyarrow.parquet as pq

        try:
            if fmt == "parquet":
                table = pq.read_table(path)
            elif fmt == "jsonl":
                table = pj.read_json(path)
            else:
                table = ipc.open_file(pa.memory_map(str(path))).read_all()
        except pa.ArrowInvalid as e:
            raise InputError(f"{path} is not an {fmt} run file ({e})") from None
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
    table = read_trec(path)
    for q, d, s in zip(
        *(table.column(c).to_pylist() for c in (C.QUERY_ID, C.DOC_ID, C.SCORE)), strict=True
    ):
        run.setdefault(q, {})[d] = float(s)
    return run


TREC_SCHEMA = pa.schema(
    [
        (C.QUERY_ID, pa.string()),
        (C.DOC_ID, pa.string()),
        (C.RANK, pa.int32()),
        (C.SCORE, pa.float64()),
    ]
)


def read_trec(path: Path) -> pa.Table:
    """A TREC run as hit columns; ranks are renumbered by score within each query, ties by doc
    id, descending, as trec_eval (and ranx) order them, not by the rank field."""
    qids: list[str] = []
    dids: list[str] = []
    scores: list[float] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise InputError(
                    f"{path}:{lineno}: a TREC run line has 6 fields (qid Q0 docid rank score "
                    f"tag), got {len(parts)}"
                )
            try:
                scores.append(float(parts[4]))
            except ValueError:
                raise InputError(f"{path}:{lineno}: score {parts[4]!r} is not a number") from None
            qids.append(parts[0])
            dids.append(parts[2])
    if not qids:
        raise InputError(f"{path} holds no run lines")
    # queries in first-seen order, each query's hits by score (ties: doc id, descending)
    first: dict[str, int] = {}
    for q in qids:
        first.setdefault(q, len(first))
    order = sorted(range(len(qids)), key=lambda i: dids[i], reverse=True)
    order.sort(key=lambda i: (first[qids[i]], -scores[i]))  # stable: keeps the tie order
    ranks, prev, r = [], None, 0
    for i in order:
        r = r + 1 if qids[i] == prev else 1
        prev = qids[i]
        ranks.append(r)
    return pa.table(
        [
            pa.array([qids[i] for i in order], pa.string()),
            pa.array([dids[i] for i in order], pa.string()),
            pa.array(ranks, pa.int32()),
            pa.array([scores[i] for i in order], pa.float64()),
        ],
        schema=TREC_SCHEMA,
    )
