"""Ingest: every corpus format, and every kind of bad input named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from searchpipe.errors import InputError
from searchpipe.stages.ingest import Ingest, read_queries

DOCS = [
    {"_id": "a", "title": "Alpha", "text": "first document", "year": 2020},
    {"_id": "b", "title": "", "text": "second document"},
    {"_id": "c", "text": "third document, no title"},
]


def table(path: Path) -> pa.Table:
    return pa.Table.from_batches(list(Ingest(path).read()))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_gives_corpus_columns_and_metadata(tmp_path: Path) -> None:
    t = table(write_jsonl(tmp_path / "c.jsonl", DOCS))
    assert t.schema.names == ["doc_id", "title", "text", "metadata"]
    assert t.column("doc_id").to_pylist() == ["a", "b", "c"]
    assert t.column("title").to_pylist() == ["Alpha", "", ""]
    assert json.loads(t.column("metadata")[0].as_py()) == {"year": 2020}
    assert t.column("metadata")[1].as_py() is None


@pytest.mark.parametrize("fmt", ["csv", "parquet", "arrow", "beir"])
def test_other_formats_read_the_same(tmp_path: Path, fmt: str) -> None:
    src = pa.table(
        {"_id": ["a", "b", "c"], "title": ["Alpha", "", ""], "text": [d["text"] for d in DOCS]}
    )
    if fmt == "csv":
        path = tmp_path / "c.csv"
        pcsv.write_csv(src, path)
    elif fmt == "parquet":
        path = tmp_path / "c.parquet"
        pq.write_table(src, path)
    elif fmt == "arrow":
        path = tmp_path / "c.arrow"
        with ipc.new_file(str(path), src.schema) as w:
            w.write_table(src)
    else:
        path = tmp_path / "beir"
        path.mkdir()
        write_jsonl(path / "corpus.jsonl", DOCS)
    t = table(path)
    assert t.column("doc_id").to_pylist() == ["a", "b", "c"]
    assert t.column("text").to_pylist() == [d["text"] for d in DOCS]


def test_batches_stream_in_fixed_row_counts(tmp_path: Path) -> None:
    rows = [{"_id": str(i), "text": f"doc {i}"} for i in range(25)]
    batches = list(Ingest(write_jsonl(tmp_path / "c.jsonl", rows), batch_rows=10).read())
    assert [b.num_rows for b in batches] == [10, 10, 5]


def test_queries_jsonl_and_tsv(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "q.jsonl", [{"_id": "q1", "text": "hello"}, {"_id": 2, "text": "world"}])
    (tmp_path / "q.tsv").write_text("q1\thello\n2\tworld\n")
    for name in ("q.jsonl", "q.tsv"):
        q = read_queries(tmp_path / name)
        assert q.column("query_id").to_pylist() == ["q1", "2"]
        assert q.column("text").to_pylist() == ["hello", "world"]


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "broken\n',
            ["c.jsonl:2", "malformed JSON"],
        ),
        (b'{"_id": "a", "text": "ok"}\n{"_id": "b"}\n', ["c.jsonl:line 2", "'text'", "missing"]),
        (b'{"_id": "a", "text": "   "}\n', ["c.jsonl:line 1", "empty"]),
        (
            b'{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n',
            ["line 2", "duplicate doc id 'a'", "line 1"],
        ),
        (b'{"_id": "a", "text": "caf\xe9"}\n', ["c.jsonl:1", "not UTF-8", "0xe9"]),
        (b"", ["no records"]),
        (b'{"text": "no id"}\n', ["line 1", "no id field"]),
        (b"[1, 2]\n", ["line 1", "JSON object"]),
    ],
    ids=[
        "malformed",
        "missing-text",
        "empty-text",
        "duplicate-id",
        "non-utf8",
        "empty-corpus",
        "no-id",
        "not-object",
    ],
)
def test_bad_jsonl_is_named_by_file_and_line(
    tmp_path: Path, content: bytes, expected: list[str]
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        table(path)
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_csv_with_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("_id,title,text\na,T,fine\nb,only two\n")
    with pytest.raises(InputError, match=r"line 3: expected 3 fields"):
        table(path)


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        Ingest(tmp_path / "nope.jsonl")
    (tmp_path / "c.docx").write_text("x")
    with pytest.raises(InputError, match="cannot tell the format"):
        Ingest(tmp_path / "c.docx")


def test_metadata_types_are_checked_at_ingest(tmp_path: Path) -> None:
    rows = [
        {"_id": "a", "text": "x", "year": 2019, "tags": ["a"], "extra": {"k": 1}},
        {"_id": "b", "text": "y", "year": 2020.5, "tags": [], "extra": {"k": 2}},
        {"_id": "c", "text": "z", "year": "soon"},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError) as e:
        list(Ingest(path).read())
    msg = str(e.value)
    assert f"{path}:line 3:" in msg and "'year' of doc 'c'" in msg
    assert "a string ('soon') but a number at line 1 (2019)" in msg
    path.write_text(json.dumps({"_id": "d", "text": "w", "tags": ["a", 3]}) + "\n")
    with pytest.raises(
        InputError, match=r"c.jsonl:line 1: metadata field 'tags'.*a list mixing int, str"
    ):
        list(Ingest(path).read())
