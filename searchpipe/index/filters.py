"""Filters over document metadata: a SQL ``WHERE`` clause, evaluated by DuckDB.

The doc store keeps each document's extra fields as JSON. To filter, they become typed Arrow
columns (once per opened index): integers, floats, booleans, strings, timestamps (ISO 8601
strings) and lists of strings, beside ``doc_id`` and ``title``. A field whose values mix
types is an error naming the field, a document and the values. DuckDB evaluates the clause
against that table with file access switched off, so a filter can read nothing but the
metadata::

    year >= 2020 AND source = 'pubmed'
    list_contains(tags, 'kitchen') OR title ILIKE '%onion%'
    modified > TIMESTAMP '2024-01-01'

The result is the set of allowed doc store rows. Dense search then runs with a FAISS
``IDSelector`` (or exactly over the allowed rows when they are few, where approximate indexes
lose recall), BM25 with a weight mask over the same rows, so fusion and rerank only ever see
matching documents and a search returns min(k, matching) hits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from searchpipe import columns as C
from searchpipe.errors import InputError

ROW = "_row"
#: dense search is exact over the allowed rows when they hold at most this many floats (rows
#: x dimension; 20k rows of 384-d), or are this small a share of the index. Measured on 100k
#: 64-d vectors (benchmarks/filters.py): exact over 10k rows takes 0.5 ms a query, HNSW and
#: IVF through a selector 14-36 ms at 50%, and selectors lose recall when they reject most of
#: what the search visits
EXACT_FLOATS = 8_000_000
EXACT_BELOW = 0.05


@dataclass
class RowFilter:
    """The doc store rows a filter allows (sorted), and the clause they came from."""

    expr: str
    rows: np.ndarray
    total: int
    #: the allowed rows' stored vectors, gathered once for exact search
    vectors: np.ndarray | None = field(default=None, repr=False, compare=False)

    def exact(self, dim: int) -> bool:
        """Whether dense search over these rows is exact rather than through a selector."""
        return len(self.rows) * dim <= EXACT_FLOATS or self.fraction < EXACT_BELOW

    @property
    def fraction(self) -> float:
        return len(self.rows) / max(self.total, 1)

    def mask(self) -> np.ndarray:
        """A 0/1 float mask over all rows (BM25's weight mask)."""
        out = np.zeros(self.total, dtype=np.float32)
        out[self.rows] = 1.0
        return out


def _is_time(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return any(c.isdigit() for c in value[:4]) and "-" in value


def _utc(value: str) -> datetime:
    """An ISO 8601 string as a naive UTC datetime (aware ones are converted)."""
    stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return stamp.astimezone(UTC).replace(tzinfo=None) if stamp.tzinfo else stamp


def _column(name: str, values: list[Any], doc_ids: list[str]) -> pa.Array:
    """One metadata field as a typed Arrow array; mixed types are the user's to fix."""
    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present}

    def mixed() -> InputError:
        firsts: dict[str, str] = {}
        for doc, v in zip(doc_ids, values, strict=True):
            if v is not None:
                firsts.setdefault(type(v).__name__, f"{doc!r} has {v!r:.40}")
        return InputError(
            f"metadata field {name!r} mixes types ({'; '.join(firsts.values())}); give it one "
            "type in every document, or rename it where it differs"
        )

    if kinds <= {bool}:
        return pa.array(values, pa.bool_())
    if kinds <= {int}:
        return pa.array(values, pa.int64())
    if kinds <= {int, float}:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if kinds <= {str}:
        if present and all(_is_time(v) for v in present):
            return pa.array([None if v is None else _utc(v) for v in values], pa.timestamp("us"))
        return pa.array(values, pa.string())
    if kinds <= {dict}:  # nested objects: JSON text, for DuckDB's json functions
        return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
    if kinds <= {list}:
        if not all(isinstance(x, str) for v in present for x in v):
            raise mixed()
        return pa.array(values, pa.list_(pa.string()))
    raise mixed()


def metadata_table(docs: pa.Table) -> pa.Table:
    """``_row``, ``doc_id``, ``title`` and each metadata field as a typed column."""
    doc_ids = docs.column(C.DOC_ID).to_pylist()
    records = [json.loads(m) if m else {} for m in docs.column(C.METADATA).to_pylist()]
    names = sorted({k for r in records for k in r if k not in (ROW, C.DOC_ID, C.TITLE)})
    columns = {
        ROW: pa.array(np.arange(len(doc_ids), dtype=np.int64)),
        C.DOC_ID: docs.column(C.DOC_ID).combine_chunks(),
        C.TITLE: docs.column(C.TITLE).combine_chunks(),
    }
    for name in names:
        columns[name] = _column(name, [r.get(name) for r in records], doc_ids)
    return pa.table(columns)


def describe(table: pa.Table) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in table.schema if f.name != ROW)


def compile_filter(table: pa.Table, expr: str) -> RowFilter:
    """The rows of ``table`` (``metadata_table``) that the ``WHERE`` clause ``expr`` allows.

    >>> t = metadata_table(pa.table({"doc_id": ["a", "b"], "title": ["", ""],
    ...     "metadata": ['{"year": 2019}', '{"year": 2021}']}))
    >>> compile_filter(t, "year >= 2020").rows.tolist()
    [1]
    """
    import duckdb

    if not expr.strip():
        raise InputError('the filter is empty; pass a WHERE clause such as "year >= 2020"')
    con = duckdb.connect(config={"enable_external_access": False})
    try:
        con.register("docs", table)
        result = con.execute(f"SELECT {ROW} FROM docs WHERE {expr} ORDER BY {ROW}")
        rows = np.asarray([r[0] for r in result.fetchall()], dtype=np.int64)
    except duckdb.Error as e:
        reason = str(e).splitlines()[0]
        raise InputError(
            f"filter {expr!r} cannot be applied ({reason}); the metadata columns are: "
            f"{describe(table)}"
        ) from None
    finally:
        con.close()
    return RowFilter(expr, rows, table.num_rows)


def exact_filtered(
    queries: np.ndarray, vectors: np.ndarray, allowed: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` over the ``allowed`` rows only (rows -1 pad)."""
    n = len(queries)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    rows = np.full((n, k), -1, dtype=np.int64)
    if len(allowed) == 0:
        return scores, rows
    sims = queries @ vectors.T  # (n, allowed)
    top = min(k, len(allowed))
    part = np.argpartition(-sims, top - 1, axis=1)[:, :top]
    order = np.take_along_axis(part, np.argsort(-np.take_along_axis(sims, part, 1), 1), 1)
    scores[:, :top] = np.take_along_axis(sims, order, 1)
    rows[:, :top] = allowed[order]
    return scores, rows
