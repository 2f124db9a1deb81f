"""Train our own reranker (cross-encoder) and embedder (bi-encoder) on a BEIR train split.

Our code is the data: read one qrels split (never ``test``), hold out a deterministic dev
slice of its queries, mine hard negatives from our own hybrid index of the corpus with a guard
against false negatives, and hand sentence-transformers' trainers and losses the resulting
datasets. Everything a run computes is kept under ``OUTPUT/train/`` so a re-run resumes:

    OUTPUT/train/split.json            train / dev query ids (the dev slice is never trained on)
    OUTPUT/train/dev-queries.jsonl     the dev slice as queries + qrels, for ``searchpipe tune``
    OUTPUT/train/dev-qrels.tsv
    OUTPUT/train/indexes/              the mining index (hybrid: dense + BM25), if built here
    OUTPUT/train/mined-<fp>.arrow      first-stage candidates with teacher scores, per query
    OUTPUT/train/checkpoints/          trainer checkpoints (resumed from the last one)
    OUTPUT/                            the final model folder (CrossEncoder / SentenceTransformer)

The false-negative guard uses the mining index's bi-encoder as teacher: a candidate is
dropped when its teacher score reaches ``margin`` times the query's weakest positive's score
(unjudged near-duplicates of a positive are more often relevant than not), and judged
positives are never negatives.

>>> train_reranker(RerankerTrainConfig(data="beir/scifact", output="models/rr"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from searchpipe import columns as C
from searchpipe.config import StrictModel
from searchpipe.errors import InputError, RunError

log = logging.getLogger("searchpipe")

TEACHER_SCORE = "teacher_score"
WORK = "train"
MINED_SCHEMA = pa.schema(
    [
        (C.QUERY_ID, pa.string()),
        (C.DOC_ROW, pa.int64()),
        (C.RANK, pa.int32()),
        (TEACHER_SCORE, pa.float32()),
    ]
)


# --- settings -------------------------------------------------------------------------------


class MiningConfig(StrictModel):
    """Hard-negative mining from the hybrid first stage."""

    depth: int = Field(default=50, ge=2)  # candidates per query from the hybrid index
    negatives: int = Field(default=7, ge=1)  # hard negatives kept per (query, positive)
    margin: float = Field(
        default=0.95, gt=0, le=1
    )  # drop candidates the teacher scores >= margin x positive
    sample: bool = True  # draw negatives at random among the guarded candidates, else the top ones


class TrainConfig(StrictModel):
    """Settings shared by both trainers (``searchpipe train reranker|embedder``)."""

    data: Path  # a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv
    output: Path
    split: str = "train"
    init: str = "minilm"  # starting weights: 'minilm' or a BERT / sentence-transformers folder
    index: str | None = None  # an existing hybrid index of the same corpus to mine from
    no_labels: bool = False  # pseudo-queries from the corpus itself; no qrels file is read
    max_queries: int = Field(default=20_000, ge=2)  # sampled cap on (pseudo-)queries per run
    dev_fraction: float = Field(default=0.1, gt=0, lt=1)
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=32, ge=2)
    lr: float = Field(default=2e-5, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=256, ge=8)
    max_steps: int = -1  # > 0: stop after this many optimiser steps (tests, smoke runs)
    eval_queries: int = Field(default=1000, ge=1)  # cap on the dev slice (model selection)
    eval_depth: int = Field(default=20, ge=1)  # first-stage candidates re-scored per dev query
    precision: str = "auto"
    seed: int = 42
    mining: MiningConfig = MiningConfig()
    progress: bool | None = None  # default: progress bars when stderr is a terminal
    #: minutes of training the step count is cut to, from a throughput measured on this
    #: machine before training (0: no cap); epochs stay the plan when they fit
    time_budget: float = Field(default=30.0, ge=0)
    evals_per_epoch: int = Field(default=2, ge=1)  # dev evaluations (and checkpoints) per epoch
    #: dropout on attention probabilities while training (BERT's own is 0.1; hidden-state
    #: dropout stays as the model has it). Above 0, PyTorch's CPU attention leaves its flash
    #: kernel for the math path, which materialises the probabilities and draws a Bernoulli
    #: mask over each: a MiniLM step on 32 x 256 tokens took 6.5 s against 2.8 s at 0
    attention_dropout: float = Field(default=0.0, ge=0, lt=1)


class RerankerTrainConfig(TrainConfig):
    """Cross-encoder on (query, positive, hard negatives) groups.

    ``loss="listwise"``: softmax cross-entropy of each positive against its mined negatives
    and ``random_negatives`` documents of other queries in the batch (localized contrastive
    estimation; ``batch_size`` counts groups). ``loss="bce"``: binary cross-entropy on single
    pairs (``batch_size`` counts pairs), positives up-weighted by the number of negatives.
    ``head="pooler-identity"`` starts the BERT pooler as the identity and the classifier at
    zero, instead of both at random.
    """

    lr: float = Field(default=5e-5, gt=0)
    batch_size: int = Field(default=4, ge=2)  # groups of 1 + negatives + random_negatives pairs
    epochs: float = Field(default=5.0, gt=0)
    max_length: int = Field(default=192, ge=8)
    loss: Literal["listwise", "bce"] = "listwise"
    random_negatives: int = Field(default=1, ge=0)  # per positive, besides the mined ones
    head: Literal["random", "pooler-identity"] = "random"
    evals_per_epoch: int = Field(default=3, ge=1)
    #: the usage choice reranks every dev query to depth 50: 500 queries are 25,000 pairs,
    #: about 7 minutes on 2 cores
    eval_queries: int = Field(default=500, ge=1)


class EmbedderTrainConfig(TrainConfig):
    """Bi-encoder: multiple-negatives ranking loss (in-batch + mined hard negatives)."""

    mining: MiningConfig = MiningConfig(depth=30, negatives=1)
    epochs: float = Field(default=4.0, gt=0)
    scale: float = Field(default=20.0, gt=0)  # inverse temperature of the contrastive softmax


# --- data -----------------------------------------------------------------------------------


def read_split(data: Path, split: str) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """Queries (``query_id``, ``text``) judged in ``qrels/<split>.tsv``, and those qrels.

    Only that one qrels file is opened; asking for ``test`` is refused, so no test judgement
    can reach training or tuning.
    """
    from searchpipe.eval.runs import read_qrels
    from searchpipe.stages.ingest import read_queries

    if split == "test":
        raise InputError(
            "training on the test split is refused; train on 'train' (a dev slice of it is "
            "held out for model selection) and evaluate on 'test'"
        )
    data = Path(data)
    qrels_path = data / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (data / "qrels").glob("*.tsv")) if data.is_dir() else []
        raise InputError(
            f"{qrels_path} does not exist; {data} has qrels splits {have or 'none'}: pass "
            "--data a BEIR folder with a train split"
        )
    qrels = {q: d for q, d in read_qrels(qrels_path).items() if any(r > 0 for r in d.values())}
    table = read_queries(data)
    keep = pa.array([q in qrels for q in table.column(C.QUERY_ID).to_pylist()])
    table = table.filter(keep)
    missing = set(qrels) - set(table.column(C.QUERY_ID).to_pylist())
    if missing:
        raise InputError(
            f"{qrels_path} judges {len(missing)} queries that {data}/queries.jsonl lacks "
            f"(e.g. {sorted(missing)[0]!r})"
        )
    return table, qrels


def _sample(qrels: dict[str, dict[str, int]], n: int, seed: int) -> dict[str, dict[str, int]]:
    """At most ``n`` queries of ``qrels``, drawn by a seeded hash (a large split fits a budget)."""
    if len(qrels) <= n:
        return qrels
    ranked = sorted(qrels, key=lambda q: hashlib.sha256(f"sample:{seed}:{q}".encode()).hexdigest())
    keep = set(ranked[:n])
    return {q: d for q, d in qrels.items() if q in keep}


def dev_split(
    query_ids: Iterable[str], fraction: float, seed: int, most: int | None = None
) -> tuple[list[str], list[str]]:
    """Deterministic (train, dev) partition of ``query_ids``: the dev slice is the ``fraction``
    of ids (at most ``most``) with the smallest seeded hash, so it does not depend on file
    order, and with the same seed a smaller slice lies inside a larger one.

    >>> train, dev = dev_split([f"q{i}" for i in range(20)], 0.1, seed=0)
    >>> len(train), len(dev), set(train) & set(dev)
    (18, 2, set())
    >>> set(dev) < set(dev_split([f"q{i}" for i in range(20)], 0.25, seed=0)[1])
    True
    >>> len(dev_split([f"q{i}" for i in range(20)], 0.5, seed=0, most=3)[1])
    3
    """
    ids = sorted(set(query_ids))
    ranked = sorted(ids, key=lambda q: hashlib.sha256(f"{seed}:{q}".encode()).hexdigest())
    n_dev = min(max(1, round(fraction * len(ids))), len(ids) - 1) if len(ids) > 1 else 0
    n_dev = min(n_dev, most) if most else n_dev
    dev = set(ranked[:n_dev])
    return [q for q in ids if q not in dev], [q for q in ids if q in dev]


def hard_negatives(
    candidates: pa.Table,
    qrels: dict[str, dict[str, int]],
    doc_ids: list[str],
    n: int,
    margin: float,
    sample: bool = True,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Doc rows of up to ``n`` hard negatives per query, from mined ``candidates``.

    A candidate is dropped when it is judged for the query (any label: positives are not
    negatives, and judged non-relevant ones are kept out for simplicity of the contract) or
    when the teacher scores it at least ``margin`` times the query's weakest judged positive
    (a likely false negative). Kept candidates are drawn at random (``sample``) or taken in
    first-stage rank order.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {}
    qid_col = candidates.column(C.QUERY_ID).to_pylist()
    rows = candidates.column(C.DOC_ROW).to_numpy()
    ranks = candidates.column(C.RANK).to_numpy()
    teacher = candidates.column(TEACHER_SCORE).to_numpy()
    by_query: dict[str, list[int]] = {}
    for i, q in enumerate(qid_col):
        by_query.setdefault(q, []).append(i)
    for q, idx in by_query.items():
        judged = qrels.get(q, {})
        positives = {d for d, r in judged.items() if r > 0}
        pos_scores = [teacher[i] for i in idx if doc_ids[rows[i]] in positives]
        # positives the first stage missed have no mined teacher score: fall back to the
        # candidates' own best score, so the guard still removes the top near-duplicates
        ceiling = margin * (min(pos_scores) if pos_scores else float(teacher[idx].max()))
        keep = [
            i
            for i in sorted(idx, key=lambda i: ranks[i])
            if doc_ids[rows[i]] not in judged and teacher[i] < ceiling
        ]
        if sample and len(keep) > n:
            keep = sorted(rng.choice(keep, size=n, replace=False).tolist(), key=lambda i: ranks[i])
        out[q] = [int(rows[i]) for i in keep[:n]]
    return out


def write_dev_files(
    work: Path, queries: pa.Table, qrels: dict[str, dict[str, int]], dev_ids: list[str]
) -> None:
    """``dev-queries.jsonl`` and ``dev-qrels.tsv``: the held-out slice, for ``searchpipe tune``."""
    dev = set(dev_ids)
    lines = [
        json.dumps({"_id": q, "text": t})
        for q, t in zip(
            queries.column(C.QUERY_ID).to_pylist(), queries.column(C.TEXT).to_pylist(), strict=True
        )
        if q in dev
    ]
    (work / "dev-queries.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = [f"{q}\t{d}\t{r}" for q in dev_ids for d, r in qrels[q].items()]
    (work / "dev-qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n", encoding="utf-8"
    )


# --- mining ---------------------------------------------------------------------------------


def mining_index(cfg: TrainConfig, work: Path, progress: bool | None) -> Any:
    """The hybrid index to mine from: ``cfg.index`` if given, else one built under ``work``."""
    from searchpipe.api import build_index, open_index
    from searchpipe.stages.ingest import Ingest

    if cfg.index is not None:
        index = open_index(cfg.index)
        expected = Ingest(Path(cfg.data)).fingerprint_source()
        if index.manifest.get("corpus", {}).get("sha256") not in (None, expected):
            raise InputError(
                f"index {cfg.index} was built from another corpus than {cfg.data}; pass an index "
                "of the same corpus, or leave out --index to build one"
            )
    else:
        name = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(cfg.data).name)
        index = build_index(
            corpus=cfg.data,
            name=name.lstrip(".") or "corpus",
            model="minilm",
            index_root=work / "indexes",
            progress=progress,
        )
    if "bm25" not in index.manifest:
        log.warning("index %s has no BM25 part; mining from dense retrieval alone", index.name)
    return index


def mine(
    index: Any, queries: pa.Table, depth: int, work: Path, progress: bool | None = None
) -> pa.Table:
    """Hybrid top-``depth`` candidates of ``queries`` with their teacher (bi-encoder) scores.

    Cached as Arrow under ``work``, keyed by the index version and the queries.
    """
    from searchpipe.api import Searcher

    key = hashlib.sha256(
        json.dumps(
            [
                index.manifest.get("build_fingerprint") or index.manifest["files"],
                depth,
                queries.column(C.QUERY_ID).to_pylist(),
                queries.column(C.TEXT).to_pylist(),
            ]
        ).encode()
    ).hexdigest()[:16]
    cache = work / f"mined-{key}.arrow"
    if cache.is_file():
        return pa.ipc.open_file(pa.memory_map(str(cache))).read_all()
    t0 = time.perf_counter()
    searcher = Searcher(index, retriever="auto")
    hits = []
    batches = queries.to_batches(max_chunksize=64)
    for batch in _bar(batches, "mine", progress, unit="batch"):
        hits.append(searcher.search_batch(pa.Table.from_batches([batch]), k=depth))
    table = pa.concat_tables(hits)
    teacher = teacher_scores(index, searcher.encoder, queries, table)
    mined = pa.table(
        [
            table.column(C.QUERY_ID),
            table.column(C.DOC_ROW).cast(pa.int64()),
            table.column(C.RANK).cast(pa.int32()),
            pa.array(teacher, pa.float32()),
        ],
        schema=MINED_SCHEMA,
    )
    tmp = cache.with_suffix(".tmp")
    with pa.ipc.new_file(str(tmp), MINED_SCHEMA) as writer:
        writer.write_table(mined)
    os.replace(tmp, cache)
    log.info(
        "mined %d candidates for %d queries in %.1fs",
        mined.num_rows,
        queries.num_rows,
        time.perf_counter() - t0,
    )
    return mined


def teacher_scores(index: Any, encoder: Any, queries: pa.Table, hits: pa.Table) -> np.ndarray:
    """Bi-encoder similarity of each (query, hit): query embeddings against the index's stored
    vectors (re-embedding the docs only when the FAISS index cannot give them back)."""
    qvec = encoder.encode(queries.column(C.TEXT).to_pylist())  # (Q, D)
    qpos = {q: i for i, q in enumerate(queries.column(C.QUERY_ID).to_pylist())}
    rows = hits.column(C.DOC_ROW).to_numpy()
    unique, inverse = np.unique(rows, return_inverse=True)
    dvec = stored_vectors(index, unique)
    if dvec is None:
        texts = index.texts(unique.tolist())
        dvec = encoder.encode([texts[int(r)] for r in unique])  # (U, D)
    qi = np.fromiter((qpos[q] for q in hits.column(C.QUERY_ID).to_pylist()), dtype=np.int64)
    return np.einsum("nd,nd->n", qvec[qi], dvec[inverse]).astype(np.float32)


def stored_vectors(index: Any, rows: np.ndarray) -> np.ndarray | None:
    """Vectors of ``rows`` from the FAISS index, or None where it does not keep them."""
    fi = index.faiss_index
    try:
        if hasattr(fi, "make_direct_map"):
            fi.make_direct_map()
        return np.stack([fi.reconstruct(int(r)) for r in rows]).astype(np.float32)
    except RuntimeError:
        return None


# --- orchestration --------------------------------------------------------------------------


def _bar(items: Any, desc: str, progress: bool | None, **kw: Any) -> Any:
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    return tqdm(items, desc=desc, disable=not show, **kw)


class Prepared:
    """What both trainers need: splits, mining index, doc texts and hard negatives."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.work = Path(cfg.output) / WORK
        self.work.mkdir(parents=True, exist_ok=True)
        #: per query, the text its positive shows in training, where it is not the document's
        #: own (a pseudo-query's positive is the document without the query's words)
        self.shown: dict[str, str] = {}
        if cfg.no_labels:
            from searchpipe.stages.ingest import corpus_file
            from searchpipe.training.pseudo import pseudo_split

            queries, qrels, self.shown = pseudo_split(
                corpus_file(Path(cfg.data)), cfg.max_queries, cfg.seed
            )
            source = f"pseudo-queries of {cfg.data}"
        else:
            queries, qrels = read_split(Path(cfg.data), cfg.split)
            source = f"{cfg.data}/qrels/{cfg.split}.tsv"
        qrels = _sample(qrels, cfg.max_queries, cfg.seed)
        # dev queries past eval_queries would be used by no check: they train instead
        train_ids, dev_ids = dev_split(qrels, cfg.dev_fraction, cfg.seed, cfg.eval_queries)
        if not train_ids or not dev_ids:
            raise InputError(
                f"{source} has {len(qrels)} queries; training needs at least 2 (one to train "
                "on, one for the dev slice)"
            )
        split_file = self.work / "split.json"
        split = {
            "split": "no-labels" if cfg.no_labels else cfg.split,
            "seed": cfg.seed,
            "train": train_ids,
            "dev": dev_ids,
        }
        if split_file.is_file() and json.loads(split_file.read_text()) != split:
            raise InputError(
                f"{split_file} holds another train/dev split (different data, split or seed); "
                "use a new --output folder or delete it"
            )
        split_file.write_text(json.dumps(split))
        write_dev_files(self.work, queries, qrels, dev_ids)
        self.qrels = qrels
        self.train_ids, self.dev_ids = train_ids, dev_ids
        self.query_text = dict(
            zip(
                queries.column(C.QUERY_ID).to_pylist(),
                queries.column(C.TEXT).to_pylist(),
                strict=True,
            )
        )
        self.index = mining_index(cfg, self.work, cfg.progress)
        self.doc_ids = self.index.docs.column(C.DOC_ID).to_pylist()
        # a document's first passage (rows are written passage 0 first) stands for it, unless
        # the first stage found a better passage for the query (``positives``)
        self.doc_row: dict[str, int] = {}
        for i, d in enumerate(self.doc_ids):
            self.doc_row.setdefault(d, i)
        unknown = {d for q in qrels.values() for d in q if d not in self.doc_row}
        if unknown:
            log.warning(
                "%d judged doc ids are not in the corpus (e.g. %r); they are skipped",
                len(unknown),
                sorted(unknown)[0],
            )
        self.candidates = mine(self.index, queries, cfg.mining.depth, self.work, cfg.progress)
        self.negatives = hard_negatives(
            self.candidates,
            qrels,
            self.doc_ids,
            cfg.mining.negatives,
            cfg.mining.margin,
            cfg.mining.sample,
            cfg.seed,
        )
        self.best_row = {
            (q, self.doc_ids[r]): r
            for q, r in zip(
                self.candidates.column(C.QUERY_ID).to_pylist(),
                self.candidates.column(C.DOC_ROW).to_pylist(),
                strict=True,
            )
        }
        needed = [r for q in qrels for r in self.negatives.get(q, [])]
        needed += [self.doc_row[d] for q in qrels.values() for d in q if d in self.doc_row]
        needed += self.candidates.column(C.DOC_ROW).to_pylist()
        self.texts = self.index.texts(needed)

    def positives(self, q: str) -> list[int]:
        """Rows of the judged positives of ``q``: the passage the first stage ranked best for
        ``q``, or the document's first passage."""
        return [
            self.best_row.get((q, d), self.doc_row[d])
            for d, r in self.qrels[q].items()
            if r > 0 and d in self.doc_row
        ]

    def examples(self, ids: list[str]) -> list[tuple[str, str, list[int]]]:
        """(query text, positive's text, negative rows) for each judged positive of ``ids``."""
        return [
            (self.query_text[q], self.shown.get(q) or self.texts[p], self.negatives.get(q, []))
            for q in ids
            for p in self.positives(q)
        ]

    def groups(self, ids: list[str], n: int, first: str) -> dict[str, list[str]]:
        """Columns ``first`` (the query), ``positive``, ``negative_1`` .. ``negative_n``: one row
        per judged positive of ``ids``; rows with fewer than ``n`` guarded negatives are left
        out, since every row needs the same columns."""
        cols: dict[str, list[str]] = {first: [], "positive": []}
        cols.update({f"negative_{i + 1}": [] for i in range(n)})
        for query, positive, negs in self.examples(ids):
            if len(negs) < n:
                continue
            cols[first].append(query)
            cols["positive"].append(positive)
            for i, row in enumerate(negs[:n]):
                cols[f"negative_{i + 1}"].append(self.texts[row])
        return cols

    def dev_samples(self) -> list[dict[str, Any]]:
        """Dev queries with their positives and first-stage candidates, for model selection
        (at most ``eval_queries``: the dev split is capped there)."""
        ids = list(self.dev_ids)
        cand: dict[str, list[int]] = {}
        for q, r in zip(
            self.candidates.column(C.QUERY_ID).to_pylist(),
            self.candidates.column(C.DOC_ROW).to_pylist(),
            strict=True,
        ):
            cand.setdefault(q, []).append(r)
        samples = []
        for q in ids:
            pos = self.positives(q)
            if not pos:
                continue
            docs = cand.get(q, [])[: self.cfg.eval_depth]
            samples.append(
                {
                    "query": self.query_text[q],
                    "positive": [self.texts[p] for p in pos],
                    "documents": [self.texts[r] for r in docs],
                    "negative": [self.texts[r] for r in docs if r not in pos],
                }
            )
        return samples


def _trainer_args(
    cls: Any,
    cfg: TrainConfig,
    work: Path,
    steps_per_epoch: int,
    max_steps: int | None = None,
    **extra: Any,
) -> Any:
    from searchpipe.models.precision import resolve_precision

    bf16 = resolve_precision(cfg.precision) == "bf16"
    progress = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    planned = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    total = max_steps if max_steps is not None else planned
    # evaluate (and checkpoint) a few times per epoch, and as often in a run cut short
    per_epoch = cfg.evals_per_epoch
    n_evals = max(per_epoch, round(per_epoch * total / max(steps_per_epoch, 1)))
    every = max(1, math.ceil(total / n_evals))
    return cls(
        output_dir=str(work / "checkpoints"),
        num_train_epochs=cfg.epochs,
        max_steps=total if max_steps is not None else cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        warmup_steps=int(cfg.warmup_ratio * total),  # 0 for very short runs: no step at lr 0
        bf16=bf16,
        use_cpu=not _cuda(),
        seed=cfg.seed,
        data_seed=cfg.seed,
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=2,
        load_best_model_at_end=True,
        logging_steps=max(1, every // 4),
        disable_tqdm=not progress,
        report_to="none",
        dataloader_num_workers=0,
        **extra,
    )


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _last_checkpoint(work: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = work / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def _quiet() -> None:
    from searchpipe.models.biencoder import quiet_transformers

    quiet_transformers()
    for name in ("transformers.trainer", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def _summary(
    cfg: TrainConfig, prep: Prepared, trainer: Any, t0: float, kind: str
) -> dict[str, Any]:
    best = trainer.state.best_metric
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    summary = {
        "kind": kind,
        "output": str(cfg.output),
        "init": cfg.init,
        "train_queries": len(prep.train_ids),
        "dev_queries": len(prep.dev_ids),
        "steps": trainer.state.global_step,
        "dev_metric": trainer.args.metric_for_best_model,
        "dev_best": round(float(best), 6) if best is not None else None,
        "loss": {"first": losses[0], "last": losses[-1]} if losses else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "settings": json.loads(cfg.model_dump_json()),
    }
    (Path(cfg.output) / "searchpipe_train.json").write_text(json.dumps(summary, indent=2))
    return summary


SETTINGS_FILE = "settings.json"  # under OUTPUT/train/: the settings the run was started with


def _settings_record(cfg: TrainConfig) -> dict[str, Any]:
    record = json.loads(cfg.model_dump_json())
    record.pop("progress", None)  # how a run shows itself, not what it computes
    return record


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def prepare_output(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> None:
    """Make ``cfg.output`` ready for a run, never reusing an old run's work silently.

    A fresh or empty folder is started in. A folder holding a run is only continued with
    ``resume`` and the same settings (a changed setting is named, exit 2), or emptied first
    with ``overwrite``.
    """
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output {out} is a file; pass a folder for the trained model")
    if Path(cfg.data).resolve() == out.resolve():
        raise InputError("--output must not be the --data folder")
    if resume and overwrite:
        raise InputError("pass either --resume or --overwrite, not both")
    record_path = out / WORK / SETTINGS_FILE
    record = _settings_record(cfg)
    if out.is_dir() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not record_path.is_file():
            raise InputError(
                f"--output {out} exists and holds no searchpipe training run; pass a new folder, "
                "or --overwrite to replace what is there"
            )
        else:
            try:
                old = json.loads(record_path.read_text())
            except ValueError:
                old = {}
            changed = _differences(old, record)
            if changed:
                raise InputError(
                    f"--output {out} holds a run with other settings ({'; '.join(changed)}); "
                    "pass a new folder, or --overwrite to start over with the new settings"
                )
            if not resume:
                raise InputError(
                    f"--output {out} already holds a run with these settings; pass --resume to "
                    "continue it (or reuse the finished model), or --overwrite to start over"
                )
    (out / WORK).mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2))


def finished(cfg: TrainConfig) -> bool:
    """Whether ``cfg.output`` holds a finished run with exactly these settings."""
    record = Path(cfg.output) / WORK / SETTINGS_FILE
    done = Path(cfg.output) / "searchpipe_train.json"
    if not (record.is_file() and done.is_file()):
        return False
    try:
        return not _differences(json.loads(record.read_text()), _settings_record(cfg))
    except ValueError:
        return False


def reranker_dataset(prep: Prepared, cfg: RerankerTrainConfig) -> Any:
    """The training rows: (query, positive, negative_1..n) groups for the listwise loss, or
    (query, document, label) pairs for BCE, with ``random_negatives`` random corpus documents
    added per positive (the listwise loss draws its random ones from the batch instead)."""
    from datasets import Dataset

    if cfg.loss == "listwise":
        groups = prep.groups(prep.train_ids, cfg.mining.negatives, "query")
        return Dataset.from_dict(groups).shuffle(seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    pairs: dict[str, list[Any]] = {"query": [], "document": [], "label": []}
    rows = sorted(prep.texts)
    judged = {prep.query_text[q]: set(prep.qrels[q]) for q in prep.train_ids}
    for query, positive, negs in prep.examples(prep.train_ids):
        extra = [
            int(r)
            for r in rng.choice(rows, size=min(cfg.random_negatives, len(rows)), replace=False)
            if prep.doc_ids[int(r)] not in judged[query]
        ]
        for text, label in [
            (positive, 1.0),
            *((prep.texts[r], 0.0) for r in [*negs, *extra]),
        ]:
            pairs["query"].append(query)
            pairs["document"].append(text)
            pairs["label"].append(label)
    return Dataset.from_dict(pairs).shuffle(seed=cfg.seed)


def listwise_loss(model: Any, random_negatives: int) -> Any:
    """Softmax cross-entropy of each positive against its hard negatives and
    ``random_negatives`` documents of the batch's other queries, on raw logits (localized
    contrastive estimation, Gao et al. 2021). It is sentence-transformers'
    ``MultipleNegativesRankingLoss`` with every pair of a batch in one forward pass (one call
    per column runs batches of ``batch_size`` pairs, about 1.5x slower on CPU)."""
    import torch
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss

    class OneForwardListwiseLoss(MultipleNegativesRankingLoss):
        def forward(
            self,
            inputs: list[list[str]],
            labels: torch.Tensor,
            prompt: str | None = None,
            task: str | None = None,
        ) -> torch.Tensor:
            anchors = inputs[0]
            columns = [inputs[1], *self.get_in_batch_negatives(anchors, inputs[1:]), *inputs[2:]]
            docs = [d for column in columns for d in column]  # column-major, as calculate_loss
            scores = self.call_model_with_columns(
                anchors * len(columns), docs, prompt=prompt, task=task
            )
            return self.calculate_loss([scores], len(anchors))  # type: ignore[arg-type]

    return OneForwardListwiseLoss(
        model, num_negatives=random_negatives, scale=1, activation_fn=torch.nn.Identity()
    )


def set_attention_dropout(model: Any, p: float) -> int:
    """Set the dropout on attention probabilities of every self-attention module of ``model``
    (BERT's ``BertSelfAttention.dropout``, which transformers hands to SDPA as ``dropout_p``);
    returns how many modules were set. The saved config keeps the model's own value."""
    import torch

    n = 0
    for module in model.modules():
        drop = getattr(module, "dropout", None)
        if type(module).__name__.endswith("SelfAttention") and isinstance(drop, torch.nn.Dropout):
            drop.p = p
            n += 1
    if n == 0:
        log.info("attention dropout: no self-attention module with a dropout in this model")
    return n


def identity_head(model: Any) -> None:
    """Pooler dense layer = identity, classifier = 0: the first steps train the classifier
    on ``tanh`` of the [CLS] output rather than on a random projection of it."""
    import torch

    bert = model.model
    pooler = getattr(getattr(bert, "bert", None), "pooler", None)
    if pooler is None:
        raise InputError("head='pooler-identity' needs a BERT model with a pooler")
    with torch.no_grad():
        pooler.dense.weight.copy_(torch.eye(pooler.dense.weight.shape[0]))
        pooler.dense.bias.zero_()
        bert.classifier.weight.zero_()
        bert.classifier.bias.zero_()


@dataclass(frozen=True)
class Rates:
    """Throughput measured on this machine, in units (pairs, texts) a second: ``train`` for
    forward and backward passes as the trainer runs them, ``forward`` for the no-gradient
    passes of a dev check."""

    train: float
    forward: float


def _timed(run: Callable[[], Any], warmup: int, timed: int) -> float:
    """The fastest of ``timed`` calls of ``run``, in seconds, after ``warmup`` untimed ones
    (the first passes pay one-off kernel and allocator setup).

    The fastest, not the median: other work on the machine only ever slows a pass, and a
    budget planned from a slowed pass finishes early (a reranker run measured 8.4 pairs/s
    while a package install ran, where the quiet machine trains 17-19), while one planned
    too fast is stopped at its budget by ``deadline_callback``."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(timed):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return max(min(times), 1e-9)


def pairs_per_second(model: Any, queries: list[str], docs: list[str], bf16: bool) -> Rates:
    """Training and dev-check throughput of a cross-encoder on this machine, over (query,
    doc) pairs at the model's length (no weight changes)."""
    import torch

    net = model.model
    was_training = net.training
    enc = model.tokenizer(
        queries, docs, truncation=True, max_length=model.max_seq_length, padding=True,
        return_tensors="pt",
    )  # fmt: skip
    enc = {k: v.to(net.device) for k, v in enc.items()}
    device = "cuda" if net.device.type == "cuda" else "cpu"

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            net(**enc).logits.float().sum().backward()

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            net(**enc)

    net.train()
    train = _timed(step, 2, 5)
    net.zero_grad(set_to_none=True)
    net.eval()
    infer = _timed(forward, 1, 3)
    net.train(was_training)
    return Rates(len(queries) / train, len(queries) / infer)


def texts_per_second(model: Any, texts: list[str], bf16: bool) -> Rates:
    """Training and dev-check throughput of a SentenceTransformer on this machine, over
    ``texts`` at its max length (no weight changes)."""
    import torch

    was_training = model.training
    features = {  # tensors, and whatever else the model's modules read (text keys ...)
        k: v.to(model.device) if hasattr(v, "to") else v for k, v in model.tokenize(texts).items()
    }
    device = "cuda" if model.device.type == "cuda" else "cpu"

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            model(dict(features))["sentence_embedding"].float().sum().backward()

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            model(dict(features))

    model.train()
    train = _timed(step, 2, 5)
    model.zero_grad(set_to_none=True)
    model.eval()
    infer = _timed(forward, 1, 3)
    model.train(was_training)
    return Rates(len(texts) / train, len(texts) / infer)


#: the share of the time budget that dev checks may take, and the fewest dev queries kept
EVAL_SHARE = 0.2
MIN_DEV = 50


def affordable_dev(
    dev: list[dict[str, Any]],
    units: Callable[[dict[str, Any]], int],
    rates: Rates,
    cfg: TrainConfig,
) -> list[dict[str, Any]]:
    """The dev samples whose checks fit ``EVAL_SHARE`` of ``cfg.time_budget`` at the measured
    forward rate, at least ``MIN_DEV`` of them.

    A 518-query pseudo-query dev slice once took 40 of the 30 budgeted minutes in dev checks
    alone, leaving 6 training steps of 290.
    """
    evals = cfg.evals_per_epoch * max(cfg.epochs, 1.0)
    allowed = EVAL_SHARE * 60 * cfg.time_budget * rates.forward / evals
    kept: list[dict[str, Any]] = []
    used = 0
    for sample in dev:
        used += units(sample)
        if used > allowed and len(kept) >= MIN_DEV:
            break
        kept.append(sample)
    if len(kept) < len(dev):
        log.info(
            "dev checks: %d of %d dev queries fit %d%% of the %.0f-minute budget",
            len(kept), len(dev), round(100 * EVAL_SHARE), cfg.time_budget,
        )  # fmt: skip
    return kept


def budget_steps(
    cfg: TrainConfig, planned: int, rates: Rates, dev_units: int, step_units: int
) -> tuple[int, dict[str, Any]]:
    """The steps that fit ``cfg.time_budget`` minutes at the measured rates (reranker pairs,
    embedder texts), dev evaluations included; a step trains ``step_units``.

    The dev checks are costed at the measured forward rate: costed at a sixth of the
    training rate, as they once were, a 30-minute reranker run set aside 5x the minutes its
    checks took and finished in 16.
    """
    rate = 0.85 * rates.train  # the optimiser step and data loading on top of the passes
    one_eval = dev_units / rates.forward

    def fitting(evals: float) -> int:
        return int((60 * cfg.time_budget - evals * one_eval) * rate / step_units)

    # a run cut short still has evals_per_epoch dev checks (see _trainer_args); the whole plan
    # has that many per epoch
    fit = fitting(cfg.evals_per_epoch)
    if fit >= planned:
        fit = fitting(cfg.evals_per_epoch * max(cfg.epochs, 1.0))
    steps = planned if cfg.time_budget == 0 else max(1, min(planned, fit))
    return steps, {
        "planned_steps": planned,
        "steps_in_budget": fit,
        "measured_per_second": round(rates.train, 1),
        "measured_forward_per_second": round(rates.forward, 1),
        "dev_check_seconds": round(one_eval, 1),
        "per_step": step_units,
        "time_budget_minutes": cfg.time_budget,
    }


def train_reranker(
    cfg: RerankerTrainConfig, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Fine-tune a cross-encoder on ``cfg.split`` with mined hard negatives; save it to
    ``cfg.output`` as a CrossEncoder folder (loadable by ``--rerank``), measure on dev how it
    is best used, and record that in the folder (``training.usage``)."""
    import torch
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from searchpipe.models.precision import resolve_precision
    from searchpipe.models.resolve import resolve_model

    prepare_output(cfg, resume, overwrite)
    _quiet()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    prep = Prepared(cfg)
    train = reranker_dataset(prep, cfg)
    if len(train) == 0:
        raise InputError(
            f"no training rows: no query has a judged positive in the corpus and "
            f"{cfg.mining.negatives} guarded hard negatives; lower --negatives or raise --depth"
        )
    ref = resolve_model(cfg.init)
    try:
        model = CrossEncoder(
            str(ref.path),
            num_labels=1,
            max_length=cfg.max_length,
            device="cuda" if _cuda() else "cpu",
            local_files_only=True,
        )
    except Exception as e:
        raise InputError(
            f"--init {cfg.init} could not be loaded as a BERT / CrossEncoder folder "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None
    if model.num_labels != 1:
        raise InputError(f"--init {cfg.init} has {model.num_labels} labels; a reranker needs 1")
    if cfg.head == "pooler-identity":
        identity_head(model)
    set_attention_dropout(model, cfg.attention_dropout)
    extra: dict[str, Any] = {}
    if cfg.loss == "listwise":
        # logits straight into the softmax (no sigmoid squashing): the positive against its
        # mined negatives and in-batch random ones
        loss = listwise_loss(model, cfg.random_negatives)
        extra["batch_sampler"] = BatchSamplers.NO_DUPLICATES  # no query twice in a batch
    else:
        # positives are 1 in (1 + negatives) pairs: weight them up so both classes count alike
        negatives = cfg.mining.negatives + cfg.random_negatives
        loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(negatives)))
    dev = prep.dev_samples()
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    planned = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    budget: dict[str, Any] = {}
    if cfg.max_steps <= 0 and cfg.time_budget > 0:
        sample = train.select(range(min(len(train), 32)))
        first = [c for c in sample.column_names if c not in ("query", "label")][0]
        rates = pairs_per_second(
            model, list(sample["query"]), list(sample[first]),
            resolve_precision(cfg.precision) == "bf16",
        )  # fmt: skip
        group = 1 + cfg.mining.negatives + cfg.random_negatives if cfg.loss == "listwise" else 1
        dev = affordable_dev(dev, lambda s: len(s["documents"]), rates, cfg)
        dev_pairs = sum(len(s["documents"]) for s in dev)
        steps, budget = budget_steps(cfg, planned, rates, dev_pairs, cfg.batch_size * group)
        if steps < planned:
            log.info(
                "time budget: %d of the %d planned steps fit in %.0f minutes at %.1f pairs/s "
                "(dev checks %.0f s each)",
                steps, planned, cfg.time_budget, rates.train, budget["dev_check_seconds"],
            )  # fmt: skip
    else:
        steps = planned
    evaluator = CrossEncoderRerankingEvaluator(
        [{k: s[k] for k in ("query", "positive", "documents")} for s in dev],
        at_k=10,
        always_rerank_positives=False,
        name="dev",
        batch_size=64,
        write_csv=False,
    )
    args = _trainer_args(
        CrossEncoderTrainingArguments,
        cfg,
        prep.work,
        steps_per_epoch,
        max_steps=steps,
        metric_for_best_model="eval_dev_ndcg@10",
        greater_is_better=True,
        **extra,
    )
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=train, loss=loss, evaluator=evaluator
    )
    log.info(
        "train reranker (%s): %d rows from %d queries (%d dev), %d steps/epoch, %d steps",
        cfg.loss,
        len(train),
        len(prep.train_ids),
        len(prep.dev_ids),
        steps_per_epoch,
        steps,
    )
    summary = _fit(trainer, model, cfg, prep, t0, "reranker")
    summary["budget"] = budget
    group = 1 + cfg.mining.negatives + cfg.random_negatives if cfg.loss == "listwise" else 1
    summary["pairs_per_second"] = round(summary["rows_per_second"] * group, 2)
    from searchpipe.training.usage import choose_usage

    usage = choose_usage(
        cfg.output,
        prep.index,
        prep.work / "dev-queries.jsonl",
        prep.work / "dev-qrels.tsv",
        max_length=cfg.max_length,
        cut_queries=cfg.no_labels,
    )
    summary["usage"] = {k: v for k, v in usage.items() if k != "table"}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (Path(cfg.output) / "searchpipe_train.json").write_text(json.dumps(summary, indent=2))
    return summary


def deadline_callback(seconds: float) -> Any:
    """A trainer callback that ends training once ``seconds`` have passed since it began,
    with a last dev check and checkpoint, so the best checkpoint is still the one kept.

    The step count is fitted to the time budget from one throughput measurement at the
    start, which varies by ~2.7x on a shared 2-core VM; this keeps a run that measured too
    fast inside its budget."""
    from transformers import TrainerCallback

    class Deadline(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.stopped_at: int | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            self.start = time.perf_counter()
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if self.stopped_at is None and time.perf_counter() - self.start > seconds:
                self.stopped_at = state.global_step
                control.should_training_stop = True
                control.should_evaluate = True
                control.should_save = True
                log.info(
                    "time budget: %.0f minutes reached at step %d of %d; stopping",
                    seconds / 60, state.global_step, state.max_steps,
                )  # fmt: skip
            return control

    return Deadline()


def _fit(trainer: Any, model: Any, cfg: Any, prep: Any, t0: float, kind: str) -> dict[str, Any]:
    """Train (resuming from the last checkpoint, if any), save the model, summarise."""
    deadline = None
    if cfg.max_steps <= 0 and cfg.time_budget > 0:
        deadline = deadline_callback(60 * cfg.time_budget)
        trainer.add_callback(deadline)
    t_train = time.perf_counter()
    try:
        # the trainer prints its loss records to stdout; stdout carries our results only
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train(resume_from_checkpoint=_last_checkpoint(prep.work))
    except (RuntimeError, ValueError) as e:
        raise RunError(f"{kind} training failed: {str(e).splitlines()[0][:200]}") from None
    seconds = time.perf_counter() - t_train
    model.save(str(cfg.output))
    summary = _summary(cfg, prep, trainer, t0, kind)
    rows = trainer.state.global_step * trainer.args.per_device_train_batch_size
    summary.update(
        train_rows=len(trainer.train_dataset),
        train_seconds=round(seconds, 1),
        rows_per_second=round(rows / max(seconds, 1e-9), 2),
        stopped_on_time_at=deadline.stopped_at if deadline is not None else None,
    )
    return summary


def train_embedder(
    cfg: EmbedderTrainConfig, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Fine-tune a bi-encoder contrastively (in-batch + mined hard negatives, no duplicate
    texts in a batch); save it to ``cfg.output`` as a SentenceTransformer folder."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.evaluation import RerankingEvaluator
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from searchpipe.models.resolve import resolve_model

    prepare_output(cfg, resume, overwrite)
    _quiet()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    prep = Prepared(cfg)
    n_neg = cfg.mining.negatives
    columns = prep.groups(prep.train_ids, n_neg, "anchor")
    if not columns["anchor"]:
        raise InputError(
            f"no training triples: no query of {cfg.split} has a judged positive in the corpus "
            f"and {n_neg} guarded hard negatives; lower --negatives or raise --depth"
        )
    train = Dataset.from_dict(columns).shuffle(seed=cfg.seed)
    ref = resolve_model(cfg.init)
    try:
        model = SentenceTransformer(
            str(ref.path), device="cuda" if _cuda() else "cpu", local_files_only=True
        )
    except Exception as e:
        raise InputError(
            f"--init {cfg.init} could not be loaded as a sentence-transformers / BERT folder "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None
    model.max_seq_length = cfg.max_length
    set_attention_dropout(model, cfg.attention_dropout)
    loss = MultipleNegativesRankingLoss(model, scale=cfg.scale)
    dev = prep.dev_samples()
    steps_per_epoch = max(1, len(train) // cfg.batch_size)
    planned = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    steps, budget = planned, dict[str, Any]()
    if cfg.max_steps <= 0 and cfg.time_budget > 0:
        from searchpipe.models.precision import resolve_precision

        sample = train.select(range(min(len(train), 16)))
        texts = [t for c in sample.column_names for t in sample[c]]
        rates = texts_per_second(model, texts, resolve_precision(cfg.precision) == "bf16")
        dev = affordable_dev(dev, lambda s: 1 + len(s["positive"]) + len(s["negative"]), rates, cfg)
        dev_texts = sum(1 + len(s["positive"]) + len(s["negative"]) for s in dev)
        steps, budget = budget_steps(cfg, planned, rates, dev_texts, cfg.batch_size * (2 + n_neg))
        if steps < planned:
            log.info(
                "time budget: %d of the %d planned steps fit in %.0f minutes at %.1f texts/s "
                "(dev checks %.0f s each)",
                steps, planned, cfg.time_budget, rates.train, budget["dev_check_seconds"],
            )  # fmt: skip
    evaluator = RerankingEvaluator(
        [{k: s[k] for k in ("query", "positive", "negative")} for s in dev],
        at_k=10,
        name="dev",
        batch_size=cfg.batch_size * 2,
        write_csv=False,
    )
    args = _trainer_args(
        SentenceTransformerTrainingArguments,
        cfg,
        prep.work,
        steps_per_epoch,
        max_steps=steps,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        metric_for_best_model="eval_dev_ndcg@10",
        greater_is_better=True,
        eval_on_start=True,  # the model it starts from, on the same dev check (``keep_init``)
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train, loss=loss, evaluator=evaluator
    )
    log.info(
        "train embedder: %d triples from %d queries (%d dev), %d steps/epoch, %d steps",
        len(train),
        len(prep.train_ids),
        len(prep.dev_ids),
        steps_per_epoch,
        steps,
    )
    summary = _fit(trainer, model, cfg, prep, t0, "embedder")
    summary["budget"] = budget
    summary["texts_per_second"] = round(summary["rows_per_second"] * (2 + n_neg), 2)
    summary.update(keep_init(trainer, summary["dev_best"]))
    if summary["kept"] == "init":
        init = SentenceTransformer(str(ref.path), device="cpu", local_files_only=True)
        init.max_seq_length = cfg.max_length
        init.save(str(cfg.output))
        log.info("embedder: %s", summary["verdict"])
    (Path(cfg.output) / "searchpipe_train.json").write_text(json.dumps(summary, indent=2))
    return summary


def keep_init(trainer: Any, best: float | None) -> dict[str, Any]:
    """Whether the trained embedder beat the model it started from on the dev check (the
    trainer's check at step 0, ``eval_on_start``) by more than ``MIN_GAIN``; if not, the init
    is what the output folder should hold, so that training never hands back an embedder that
    dev ranks below the zero-shot one.

    The check is the trainer's: each dev query's positives among its first-stage candidates.
    """
    from searchpipe.training.sweep import MIN_GAIN

    metric = trainer.args.metric_for_best_model
    start = [e[metric] for e in trainer.state.log_history if e.get("step") == 0 and metric in e]
    if not start or best is None:
        return {"dev_init": None, "kept": "trained", "verdict": "no dev check of the init"}
    init = float(start[0])
    if best > init + MIN_GAIN:
        return {
            "dev_init": round(init, 6),
            "kept": "trained",
            "verdict": f"dev nDCG@10 {best:.4f} against the init's {init:.4f}",
        }
    return {
        "dev_init": round(init, 6),
        "kept": "init",
        "verdict": (
            f"training did not beat the model it started from on dev (best {best:.4f} against "
            f"{init:.4f}, needed more than +{MIN_GAIN}), so the folder holds the init unchanged; "
            "try more data, another learning rate or more steps"
        ),
    }
