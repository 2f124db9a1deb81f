"""Hostile corpus files: whatever the bytes, ingest yields valid batches or an InputError that
names the file and the line (or row), never a crash or traceback.

Cases run per test are counted in ``CASES`` and printed at the end of the module (``-s``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from searchpipe import columns as C
from searchpipe.errors import InputError
from searchpipe.stages.ingest import Ingest

CASES: Counter[str] = Counter()
WHERE = re.compile(r"(:\d+:|line \d+|row \d+)")
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same cases every run: CI red means a regression, not luck
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def ingest_outcome(path: Path, kind: str = "doc") -> pa.Table | InputError:
    """Read ``path``; return the table, or the InputError (anything else fails the test)."""
    try:
        batches = list(Ingest(path, kind=kind).read())
    except InputError as e:
        message = str(e)
        assert str(path) in message, f"error does not name the file: {message}"
        assert "\n" not in message
        if "has no records" not in message:
            assert WHERE.search(message), f"error does not name the line or row: {message}"
        return e
    table = pa.Table.from_batches(batches)
    ids = table.column(C.QUERY_ID if kind == "query" else C.DOC_ID).to_pylist()
    assert len(set(ids)) == len(ids) and all(i.strip() for i in ids)
    assert all(t.strip() for t in table.column(C.TEXT).to_pylist())
    for name in table.column_names:  # every string is valid UTF-8 for Arrow and JSON
        for v in table.column(name).to_pylist():
            if v is not None:
                v.encode("utf-8")
    return table


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- strategies

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
ids = st.one_of(st.text(max_size=6), st.integers(-5, 5), st.none(), st.floats(), st.booleans())
records = st.fixed_dictionaries(
    {},
    optional={
        "_id": ids,
        "id": ids,
        "text": st.one_of(st.text(max_size=30), json_values),
        "title": json_values,
        "extra": json_values,
    },
)
corruptions = st.sampled_from(
    [b"", b"\xff", b"\xc3", b"\xed\xa0\x80", b"{", b"}", b"\x00", b'"', b"\\ud800", b"\n", b"\r\n",
     b",", b"\t", b"NaN", b"\xef\xbb\xbf"]
)  # fmt: skip


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    lines = []
    for rec in draw(st.lists(records, max_size=8)):
        line = json.dumps(rec, allow_nan=True).encode()
        if draw(st.booleans()):
            cut = draw(st.integers(0, len(line)))
            line = line[:cut] + draw(corruptions) + line[cut:]
        lines.append(line)
    if lines and draw(st.booleans()):  # a duplicate line
        lines.append(lines[draw(st.integers(0, len(lines) - 1))])
    return b"\n".join(lines) + draw(st.sampled_from([b"", b"\n", b"\n\n"]))


csv_fields = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    import csv
    import io

    header = draw(
        st.sampled_from([["_id", "title", "text"], ["id", "text"], ["text"], ["a", "b"], []])
    )
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(header)
    for _ in range(draw(st.integers(0, 6))):
        width = len(header) if header and draw(st.booleans()) else draw(st.integers(0, 4))
        writer.writerow([draw(csv_fields) for _ in range(width)])
    data = out.getvalue().encode("utf-8", "surrogatepass")
    if data and draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(corruptions) + data[cut:]
    return data


# ---------------------------------------------------------------- properties


@FUZZ
@given(data=st.binary(max_size=300))
@example(data=b"")
@example(data=b"\n\n  \n")
@example(data=b"\xef\xbb\xbf" + b'{"_id": "a", "text": "bom"}\n')
@example(data=b'{"_id": "a", "text": "x"}\n' * 2)
@example(data=b"[" * 100_000)
@example(data=b'{"_id": ' + b"9" * 5000 + b', "text": "big id"}')
@example(data=b'{"_id": "a", "text": "\\ud800"}')
@example(data=b'{"_id": "a", "text": "ok", "meta": "\\udfff"}')
@example(data=b'{"_id": NaN, "text": "x"}')
@example(data=b'{"_id": "a", "text": NaN}')
def test_random_bytes_as_jsonl(tmp_path: Path, data: bytes) -> None:
    CASES["random bytes as JSONL"] += 1
    ingest_outcome(write(tmp_path, "c.jsonl", data))


@FUZZ
@given(data=jsonl_files())
def test_malformed_jsonl(tmp_path: Path, data: bytes) -> None:
    CASES["malformed JSONL"] += 1
    ingest_outcome(write(tmp_path, "c.jsonl", data))


@FUZZ
@given(data=st.binary(max_size=300))
@example(data=b"")
@example(data=b"_id,text\n")
@example(data=b"\xef\xbb\xbf_id,text\na,hello\n")
@example(data=b'_id,text\na,"unterminated\n')
@example(data=b"_id,text\na,nul\x00byte\n")
@example(data=b"_id,text\na,x\na,y\n")
def test_random_bytes_as_csv(tmp_path: Path, data: bytes) -> None:
    CASES["random bytes as CSV"] += 1
    ingest_outcome(write(tmp_path, "c.csv", data))


@FUZZ
@given(data=csv_files())
def test_malformed_csv(tmp_path: Path, data: bytes) -> None:
    CASES["malformed CSV"] += 1
    ingest_outcome(write(tmp_path, "c.csv", data))


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), csv_files()))
def test_random_queries_tsv_and_jsonl(tmp_path: Path, data: bytes) -> None:
    CASES["random queries files"] += 1
    ingest_outcome(write(tmp_path, "q.tsv", data.replace(b",", b"\t")), kind="query")
    ingest_outcome(write(tmp_path, "q.jsonl", data), kind="query")


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same cases every run: CI red means a regression, not luck
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "_id": st.one_of(st.text(max_size=4), st.none()),
                "text": st.one_of(st.text(max_size=10), st.none()),
            }
        ),
        max_size=6,
    ),
    fmt=st.sampled_from(["parquet", "arrow"]),
    vector=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=4),
)
def test_columnar_files_with_odd_values(
    tmp_path: Path, rows: list[dict], fmt: str, vector: list[float]
) -> None:
    """Parquet/Arrow rows with null ids or texts and a float-list column holding NaN."""
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    CASES["Parquet/Arrow with odd values"] += 1
    table = pa.table(
        {
            "_id": pa.array([r["_id"] for r in rows], pa.string()),
            "text": pa.array([r["text"] for r in rows], pa.string()),
            "embedding": pa.array([vector] * len(rows), pa.list_(pa.float32())),
        }
    )
    path = tmp_path / f"c.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        with ipc.new_file(str(path), table.schema) as w:
            w.write_table(table)
    ingest_outcome(path)
    CASES["truncated Parquet/Arrow"] += 1
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
    ingest_outcome(path)


# ---------------------------------------------------------------- named cases


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_10mb_document_is_read(tmp_path: Path, fmt: str) -> None:
    big = "lorem ipsum " * (10 * 1024 * 1024 // 12 + 1)
    if fmt == "jsonl":
        data = (json.dumps({"_id": "big", "text": big}) + "\n").encode()
    else:
        data = f"_id,text\nbig,{big}\nsmall,tiny\n".encode()
    table = ingest_outcome(write(tmp_path, f"c.{fmt}", data))
    CASES["10 MB documents"] += 1
    assert isinstance(table, pa.Table) and len(table.column(C.TEXT)[0].as_py()) >= 10 * 1024 * 1024


@pytest.mark.parametrize(
    ("fmt", "data", "line", "says"),
    [
        (
            "jsonl",
            b'{"_id":"a","text":"x"}\n{"_id":"b","text":"y"}\n{"_id":"c","text":"\xff"}\n',
            3,
            "UTF-8",
        ),
        (
            "csv",
            b"_id,text\na,x\nb,y\n" + b"".join(b"c%d,ok\n" % i for i in range(3000)) + b"d,\xff\n",
            3004,
            "UTF-8",
        ),
        ("jsonl", b'{"_id":"a","text":"x"}\n\n{"_id":"a","text":"y"}\n', 3, "duplicate"),
        ("csv", b"_id,text\na,x\nb,y\na,z\n", 4, "duplicate"),
        ("jsonl", b'{"_id":"a","text":""}\n', 1, "empty"),
        ("csv", b"_id,text\na,x\nb,   \n", 3, "empty"),
        ("jsonl", b'{"_id":"a","text":"x"}\n{"_id":"b","text":"\\ud800"}\n', 2, "UTF-8"),
        ("jsonl", b'{"_id":"a","text":"x"}\n' + b"[" * 50_000 + b"\n", 2, "JSON"),
        ("csv", b"_id,text\na,x\nb,y,z\n", 3, "expected 2 fields"),
    ],
)
def test_errors_name_the_right_line(
    tmp_path: Path, fmt: str, data: bytes, line: int, says: str
) -> None:
    CASES["named bad lines"] += 1
    error = ingest_outcome(write(tmp_path, f"c.{fmt}", data))
    assert isinstance(error, InputError)
    assert re.search(rf"(:{line}:|line {line}\b)", str(error)) and says in str(error), str(error)


@pytest.mark.parametrize("bad", ["nan", "inf", "dim"])
def test_nan_or_wrong_dimension_vectors_are_refused_by_doc(tmp_path: Path, bad: str) -> None:
    from fault_helpers.fakes import DIM, ENCODER

    from searchpipe.arrow import vectors_to_arrow
    from searchpipe.stages.build import BuildIndex

    CASES["NaN / wrong-dimension vectors"] += 1
    vectors = np.ones((3, DIM + (bad == "dim")), np.float32)
    if bad != "dim":
        vectors[1, 2] = np.nan if bad == "nan" else np.inf
    batch = pa.record_batch(
        {
            C.DOC_ID: ["a", "b", "c"], C.TITLE: ["", "", ""], C.TEXT: ["x", "y", "z"],
            C.METADATA: pa.nulls(3, pa.string()), C.EMBEDDING: vectors_to_arrow(vectors),
        }
    )  # fmt: skip
    stage = BuildIndex(tmp_path / "ix", "Flat", ENCODER, {}, 3)
    with pytest.raises(InputError, match="'b'" if bad != "dim" else "dimension"):
        for _ in stage(iter([batch])):
            pass
    assert not (tmp_path / "ix" / "manifest.json").exists()
    assert not list((tmp_path / "ix").glob("v*")) and not list((tmp_path / "ix").glob(".staging*"))


def test_zz_report_counts() -> None:
    total = sum(CASES.values())
    print(f"\ningest fuzz cases run: {dict(CASES)}, total {total}")
