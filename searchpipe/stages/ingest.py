"""Ingest: read a corpus or queries file into a stream of validated Arrow batches.

Corpus formats: JSONL, CSV, Parquet, Arrow IPC (file or stream), a BEIR folder (its
``corpus.jsonl``), or any other folder: its text, Markdown, HTML, PDF and Word files, one
document each (``stages.documents``; unreadable files are skipped and listed). Rows become ``doc_id, title, text, metadata`` (metadata: the other fields of
the record, as JSON text). Queries: JSONL, TSV (``id<TAB>text``), or a BEIR folder / queries
file; rows become ``query_id, text``.

Every row is checked as it streams by: a missing or empty id or text, a duplicate id, bad
JSON or non-UTF-8 bytes stop the read with an ``InputError`` naming the file and line (or
row) and the fix. Memory holds one batch plus the set of ids seen.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from searchpipe import columns as C
from searchpipe.errors import InputError
from searchpipe.files import sha256_file
from searchpipe.stages.base import Source

ID_KEYS = ("_id", "doc_id", "id", "docid")
QUERY_ID_KEYS = ("_id", "query_id", "qid", "id")
CORPUS_SCHEMA = pa.schema(
    [
        (C.DOC_ID, pa.string()),
        (C.TITLE, pa.string()),
        (C.TEXT, pa.string()),
        (C.METADATA, pa.string()),
    ]
)
QUERY_SCHEMA = pa.schema([(C.QUERY_ID, pa.string()), (C.TEXT, pa.string())])
FORMATS = ("jsonl", "csv", "tsv", "parquet", "arrow")


def corpus_file(path: Path) -> Path:
    """The corpus behind CORPUS: the file itself, a BEIR folder's corpus.jsonl, or a folder
    of documents."""
    if path.is_dir():
        inner = path / "corpus.jsonl"
        return inner if inner.is_file() else path
    if not path.exists():
        raise InputError(f"corpus {path} does not exist")
    return path


def queries_file(path: Path) -> Path:
    if path.is_dir():
        inner = path / "queries.jsonl"
        if not inner.is_file():
            raise InputError(f"{path} is a folder without queries.jsonl; pass a queries file")
        return inner
    if not path.exists():
        raise InputError(f"queries file {path} does not exist")
    return path


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "folder"
    suffixes = [s.lower() for s in path.suffixes]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".gz", ".zst") and len(suffixes) > 1:
        ext = suffixes[-2]
    table = {
        ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
        ".parquet": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow",
    }  # fmt: skip
    if ext not in table:
        raise InputError(
            f"cannot tell the format of {path} from its extension {ext!r}; use one of "
            ".jsonl, .csv, .tsv, .parquet, .arrow, or pass the folder holding your documents "
            "(.txt, .md, .html, .pdf, .docx)"
        )
    return table[ext]


class _RowChecker:
    """Validates rows as they stream and packs them into Arrow batches."""

    def __init__(self, path: Path, kind: str, id_keys: tuple[str, ...], batch_rows: int) -> None:
        self.path, self.kind, self.id_keys, self.batch_rows = path, kind, id_keys, batch_rows
        self.seen: dict[str, str] = {}  # id -> where it was first seen
        self.rows: list[dict[str, Any]] = []
        #: metadata field -> (its type, where it was first seen, that value)
        self.kinds: dict[str, tuple[str, str, Any]] = {}

    def add(self, record: Any, where: str) -> None:
        if not isinstance(record, dict):
            raise InputError(
                f"{self.path}:{where}: expected a JSON object per line, got {type(record).__name__}"
            )
        key = next((k for k in self.id_keys if k in record), None)
        if key is None:
            raise InputError(
                f"{self.path}:{where}: record has no id field (looked for {', '.join(self.id_keys)}); "
                f'add one, e.g. "_id"'
            )
        rid = record[key]
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            raise InputError(
                f"{self.path}:{where}: {self.kind} id is empty; give every record an id"
            )
        if isinstance(rid, float) or not isinstance(rid, str | int):
            raise InputError(
                f"{self.path}:{where}: {self.kind} id {rid!r} must be a string or integer"
            )
        rid = str(rid)
        if rid in self.seen:
            raise InputError(
                f"{self.path}:{where}: duplicate {self.kind} id {rid!r} (first at {self.seen[rid]}); "
                "ids must be unique"
            )
        self.seen[rid] = where
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            what = (
                "missing"
                if text is None
                else "empty"
                if isinstance(text, str)
                else f"not a string ({text!r:.40})"
            )
            raise InputError(
                f"{self.path}:{where}: field 'text' of {self.kind} {rid!r} is {what}; every record needs a non-empty text"
            )
        title = record.get("title")
        if title is not None and not isinstance(title, str):
            title = str(title)
        extra = {k: v for k, v in record.items() if k not in (key, "text", "title")}
        self.check_types(extra, rid, where)
        meta = json.dumps(extra, ensure_ascii=False, default=str) if extra else None
        for field, value in (("id", rid), ("title", title), ("text", text), ("other fields", meta)):
            if value is not None and not _is_utf8(value):
                raise InputError(
                    f"{self.path}:{where}: {field} of {self.kind} {rid!r:.40} holds a lone surrogate "
                    "(an unpaired \\ud800-\\udfff escape), which is not valid UTF-8; fix that escape"
                )
        self.rows.append({"id": rid, "title": title or "", "text": text, "meta": meta})

    def check_types(self, extra: dict[str, Any], rid: str, where: str) -> None:
        """Each metadata field keeps one type in every record, so it becomes one typed column
        to filter on (``index.filters``)."""
        for name, value in extra.items():
            kind = _metadata_kind(value)
            if kind is None:
                continue
            if kind.startswith("a list mixing"):
                raise InputError(
                    f"{self.path}:{where}: metadata field {name!r} of {self.kind} {rid!r:.40} is "
                    f"{kind} ({value!r:.60}); a list field holds strings only"
                )
            first = self.kinds.setdefault(name, (kind, where, value))
            if first[0] != kind:
                raise InputError(
                    f"{self.path}:{where}: metadata field {name!r} of {self.kind} {rid!r:.40} is "
                    f"{kind} ({value!r:.40}) but {first[0]} at {first[1]} ({first[2]!r:.40}); "
                    "give the field one type in every record, or rename it where it differs"
                )

    def full(self) -> bool:
        return len(self.rows) >= self.batch_rows

    def flush(self) -> pa.RecordBatch:
        rows, self.rows = self.rows, []
        if self.kind == "query":
            return pa.record_batch(
                [
                    pa.array([r["id"] for r in rows], pa.string()),
                    pa.array([r["text"] for r in rows], pa.string()),
                ],
                schema=QUERY_SCHEMA,
            )
        meta = [r["meta"] for r in rows]
        return pa.record_batch(
            [
                pa.array([r["id"] for r in rows], pa.string()),
                pa.array([r["title"] for r in rows], pa.string()),
                pa.array([r["text"] for r in rows], pa.string()),
                pa.array(meta, pa.string()),
            ],
            schema=CORPUS_SCHEMA,
        )


def _metadata_kind(value: Any) -> str | None:
    """The type a metadata value gives its column (None: missing, fits any)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return "a list of strings"
        return "a list mixing " + ", ".join(sorted({type(v).__name__ for v in value}))
    if isinstance(value, dict):
        return "an object"
    return "a string"  # strings, and dates and the like, which are stored as text


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each physical line; bad bytes are an error naming the line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
                raw = raw[3:]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(
                    f"{path}:{lineno}: bytes are not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                    "re-encode the file as UTF-8"
                ) from None


def _jsonl_records(path: Path) -> Iterator[tuple[Any, str]]:
    for lineno, line in _utf8_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); fix that line"
            ) from None
        except (ValueError, RecursionError) as e:  # a 5000-digit number, [[[[... nesting
            reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:80]
            raise InputError(f"{path}:{lineno}: malformed JSON ({reason}); fix that line") from None
        yield record, f"line {lineno}"


# a 10 MB document is one CSV field; the csv module's default limit is 128 KiB
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


def _delimited_records(
    path: Path, delimiter: str, header: bool | None
) -> Iterator[tuple[Any, str]]:
    # lines are decoded one by one, so a bad byte is reported on its own line
    lines = (line for _, line in _utf8_lines(path))
    reader = csv.reader(lines, delimiter=delimiter)
    names: list[str] | None = None
    try:
        for rowno, row in enumerate(reader, start=1):
            if rowno == 1:
                lowered = [c.strip().lower() for c in row]
                looks_like_header = "text" in lowered or any(
                    k in lowered for k in ID_KEYS + QUERY_ID_KEYS
                )
                if header or (header is None and looks_like_header):
                    names = lowered
                    continue
                names = ["_id", "text"] if len(row) == 2 else ["_id", "title", "text"][: len(row)]
            if not row:
                continue
            assert names is not None
            if len(row) != len(names):
                raise InputError(
                    f"{path}: line {reader.line_num}: expected {len(names)} fields ({', '.join(map(repr, names))}), "
                    f"got {len(row)}; quote fields that contain the delimiter"
                )
            yield dict(zip(names, row, strict=True)), f"line {reader.line_num}"
    except csv.Error as e:
        raise InputError(
            f"{path}: line {reader.line_num}: malformed {delimiter!r}-separated row ({e})"
        ) from None


def _columnar_records(path: Path, fmt: str) -> Iterator[tuple[Any, str]]:
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            batches: Iterator[pa.RecordBatch] = pq.ParquetFile(path).iter_batches(batch_size=4096)
        else:
            source = pa.memory_map(str(path))
            try:
                reader = ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:
                batches = iter(ipc.open_stream(pa.memory_map(str(path))))
        row = 0
        for batch in batches:
            for record in batch.to_pylist():
                row += 1
                yield record, f"row {row}"
    except (pa.ArrowException, OSError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise InputError(f"{path}: row 1: not a readable {fmt} file ({reason})") from None


class Ingest(Source):
    """Read a corpus (or queries) file as validated Arrow batches.

    >>> batches = Ingest("searchpipe/data/sample/corpus.jsonl").read()
    >>> next(batches).schema.names
    ['doc_id', 'title', 'text', 'metadata']
    """

    name = "ingest"
    provides: tuple[str, ...] = (C.DOC_ID, C.TITLE, C.TEXT, C.METADATA)

    def __init__(
        self,
        path: str | Path,
        kind: str = "doc",
        batch_rows: int = 1024,
        globs: tuple[str, ...] = (),
        strict: bool = False,
    ) -> None:
        self.kind = kind
        raw = Path(path)
        self.path = queries_file(raw) if kind == "query" else corpus_file(raw)
        self.format = detect_format(self.path)
        self.batch_rows = batch_rows
        self.globs = tuple(globs)
        self.strict = strict
        #: (file, reason) of each file of a folder that could not be read (set by ``read``)
        self.skipped: list[tuple[str, str]] | None = None
        self._sha256: str | None = None
        if kind == "query":
            self.provides = (C.QUERY_ID, C.TEXT)

    def settings(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "path": str(self.path),
            "kind": self.kind,
            "batch_rows": self.batch_rows,
        }
        if self.format == "folder":
            s["globs"] = list(self.globs)
        return s

    def fingerprint_source(self) -> str:
        if self._sha256 is None:
            if self.format == "folder":
                from searchpipe.stages.documents import folder_sha256

                self._sha256 = folder_sha256(self.path, self.globs)
            else:
                self._sha256 = sha256_file(self.path)
        return self._sha256

    def scan(self) -> list[tuple[str, str]]:
        """The files of a folder corpus that cannot be read, with the reason (reads them all)."""
        if self.format != "folder":
            return []
        from searchpipe.stages.documents import read_folder

        return [
            (path.relative_to(self.path).as_posix(), reason)
            for path, _, reason in read_folder(self.path, self.globs)
            if reason is not None
        ]

    def check_strict(self) -> None:
        """With ``strict``, refuse a folder holding any file that cannot be read (exit 2)."""
        if self.strict and (skipped := self.scan()):
            listed = "; ".join(f"{path}: {why}" for path, why in skipped[:20])
            more = f" (and {len(skipped) - 20} more)" if len(skipped) > 20 else ""
            raise InputError(
                f"{len(skipped)} file(s) of {self.path} cannot be read: {listed}{more}; fix or "
                "remove them, or leave out --strict to skip them"
            )

    def _folder_records(self) -> Iterator[tuple[Any, str]]:
        from searchpipe.stages.documents import read_folder

        self.skipped = []
        for path, doc, reason in read_folder(self.path, self.globs):
            rel = path.relative_to(self.path).as_posix()
            if doc is None:
                self.skipped.append((rel, reason or "unreadable"))
                continue
            extra = {k: v for k, v in doc.metadata.items() if k not in ("_id", "title", "text")}
            yield {**extra, "_id": doc.doc_id, "title": doc.title, "text": doc.text}, rel

    def records(self) -> Iterator[tuple[Any, str]]:
        if self.format == "folder":
            return self._folder_records()
        if self.format == "jsonl":
            return _jsonl_records(self.path)
        if self.format in ("csv", "tsv"):
            delimiter = "," if self.format == "csv" else "\t"
            header = None if self.kind == "query" else True
            return _delimited_records(self.path, delimiter, header)
        return _columnar_records(self.path, self.format)

    def read(self) -> Iterator[pa.RecordBatch]:
        keys = QUERY_ID_KEYS if self.kind == "query" else ID_KEYS
        checker = _RowChecker(self.path, self.kind, keys, self.batch_rows)
        count = 0
        for record, where in self.records():
            checker.add(record, where)
            count += 1
            if checker.full():
                yield checker.flush()
        if count == 0:
            what = "queries file" if self.kind == "query" else "corpus"
            skipped = f" ({len(self.skipped)} file(s) could not be read)" if self.skipped else ""
            raise InputError(
                f"{what} {self.path} has no records{skipped}; it must hold at least one"
            )
        if checker.rows:
            yield checker.flush()


def read_queries(path: str | Path) -> pa.Table:
    """All queries of a file as one table (``query_id, text``)."""
    return pa.Table.from_batches(list(Ingest(path, kind="query").read()), schema=QUERY_SCHEMA)
