"""Incremental add/delete, version retention, the check/add/delete commands, hostile files.

The id-mapping property runs twice: with hypothesis over random add/delete sequences on a
hash encoder (fast, many sequences), and on real MiniLM embeddings of short texts (a few
hundred documents by default, 10k with ``-m slow``): after the updates, each live document's
own text, embedded afresh, finds its own id first.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from fault_helpers.fakes import (
    ENCODER,
    HashEncoder,
    build_fake,
    text_vectors,
    words_text,
    write_jsonl,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from searchpipe import columns as C
from searchpipe.api.update import add_documents, delete_documents
from searchpipe.errors import InputError, RunError
from searchpipe.index.store import (
    MANIFEST,
    VECTORS_FILE,
    Index,
    IndexWriter,
    manifest_bytes,
    manifest_digest,
    read_manifest,
)

ROOT = Path(__file__).resolve().parents[1]


class CountingEncoder(HashEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.texts += texts
        return super().encode(texts)


def doc_ids(index: Index) -> list[str]:
    return index.docs.column(C.DOC_ID).to_pylist()


def own_vector_finds_own_id(index: Index) -> float:
    """Share of docs whose stored vector (vectors.arrow) returns the doc's own id first."""
    import pyarrow.ipc as ipc

    stored = ipc.open_file(pa.memory_map(str(index.version_dir / VECTORS_FILE))).read_all()
    vectors = np.stack(stored.column(C.EMBEDDING).to_numpy(zero_copy_only=False))
    _, rows = index.search(vectors.astype(np.float32), 1)
    return float((rows[:, 0] == np.arange(len(index))).mean())


# ---------------------------------------------------------------- add / delete semantics


def test_add_appends_new_upserts_changed_and_skips_unchanged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = [f"d{i}" for i in range(100)]
    texts = [words_text(rng) for _ in ids]
    build_fake(tmp_path / "ix", ids, texts)
    more_ids = ids[:10] + ids[10:15] + ["n1", "n2", "n3"]
    more_texts = (
        texts[:10] + ["changed " + t for t in texts[10:15]] + ["new one", "new two", "new three"]
    )
    more = write_jsonl(tmp_path / "more.jsonl", more_ids, more_texts)
    enc = CountingEncoder()
    result = add_documents("ix", more, tmp_path, encoder=enc)
    assert (result["added"], result["updated"], result["unchanged"]) == (3, 5, 10)
    assert result["committed"] and result["version"] == 2 and result["docs"] == 103
    # only the 8 new or changed documents were embedded
    assert sorted(enc.texts) == sorted(more_texts[10:])
    index = Index.open("ix", tmp_path)
    by_id = dict(zip(doc_ids(index), index.docs.column(C.TEXT).to_pylist(), strict=True))
    assert by_id["d10"] == "changed " + texts[10] and by_id["n2"] == "new two"
    assert by_id["d0"] == texts[0] and len(by_id) == 103 == index.faiss_index.ntotal
    assert own_vector_finds_own_id(index) == 1.0
    # upserted docs are found by their new text, lexically and densely
    _, rows = index.bm25.search(["changed " + texts[10]], 1)
    assert doc_ids(index)[rows[0, 0]] == "d10"
    _, rows = index.search(text_vectors(["changed " + texts[10]]), 1)
    assert doc_ids(index)[rows[0, 0]] == "d10"
    # re-adding the same file is a no-op: nothing embedded, no new version
    enc.texts.clear()
    again = add_documents("ix", more, tmp_path, encoder=enc)
    assert not again["committed"] and again["unchanged"] == 18 and again["version"] == 2
    assert enc.texts == []
    assert index.manifest["updates"][-1]["op"] == "add"


def test_deleted_documents_never_come_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ids = [f"d{i}" for i in range(200)]
    texts = [words_text(rng, 12) for _ in ids]
    build_fake(tmp_path / "ix", ids, texts)
    gone = ids[::4]
    result = delete_documents("ix", [*gone, "not-there"], tmp_path)
    assert (result["deleted"], result["not_found"], result["docs"]) == (50, 1, 150)
    # later updates rebuild from the surviving rows only
    more = write_jsonl(tmp_path / "m.jsonl", ["x1"], ["a brand new document"])
    add_documents("ix", more, tmp_path, encoder=HashEncoder())
    index = Index.open("ix", tmp_path)
    live = set(doc_ids(index))
    assert live.isdisjoint(gone) and len(live) == 151
    gone_texts = [texts[ids.index(g)] for g in gone]
    _, rows = index.search(text_vectors(gone_texts), 20)  # dense
    assert live >= {doc_ids(index)[r] for r in rows.reshape(-1) if r >= 0}
    assert not set(np.asarray(doc_ids(index))[rows.reshape(-1)]) & set(gone)
    _, brows = index.bm25.search(gone_texts, 20)  # lexical
    assert not {doc_ids(index)[r] for r in brows.reshape(-1) if r >= 0} & set(gone)
    assert index.manifest["bm25"]["docs"] == 151 == index.faiss_index.ntotal
    assert own_vector_finds_own_id(index) == 1.0
    # deleting again is a no-op; deleting everything is refused
    assert not delete_documents("ix", gone, tmp_path)["committed"]
    with pytest.raises(InputError, match="empty"):
        delete_documents("ix", sorted(live), tmp_path)


def test_updates_keep_the_last_n_versions(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    ids = [f"d{i}" for i in range(60)]
    build_fake(tmp_path / "ix", ids, [words_text(rng) for _ in ids])
    for i in range(5):
        delete_documents("ix", [ids[i]], tmp_path, keep=3)
    root = tmp_path / "ix"
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == ["v000004", "v000005", "v000006"]
    assert read_manifest(root)["kept_versions"] == folders
    delete_documents("ix", [ids[9]], tmp_path, keep=1)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["v000007"]


def test_updates_work_on_trained_and_graph_indexes(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ids = [f"d{i}" for i in range(300)]
    texts = [words_text(rng) for _ in ids]
    for factory in ("IVF4,Flat", "HNSW8"):
        name = factory.replace(",", "_")
        build_fake(tmp_path / name, ids, texts, factory=factory, bm25=False)
        more = write_jsonl(tmp_path / "m.jsonl", ["n1", "d0"], ["new", "changed"])
        add_documents(name, more, tmp_path, encoder=HashEncoder())
        delete_documents(name, ids[1:50], tmp_path)
        index = Index.open(name, tmp_path)
        assert index.manifest["factory"] == factory and len(index) == 252
        assert "bm25" not in index.manifest and index.bm25 is None
        if factory == "HNSW8":  # exact enough to check every row
            assert own_vector_finds_own_id(index) == 1.0


def test_a_second_writer_fails_fast_during_an_update(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ids = [f"d{i}" for i in range(20)]
    build_fake(tmp_path / "ix", ids, [words_text(rng) for _ in ids])
    with IndexWriter(tmp_path / "ix"):
        t0 = time.perf_counter()
        with pytest.raises(InputError, match="being written by another process"):
            delete_documents("ix", ["d1"], tmp_path)
        assert time.perf_counter() - t0 < 5
        assert len(Index.open("ix", tmp_path)) == 20  # readers do not wait for the lock


def test_update_needs_an_index_and_the_same_encoder(tmp_path: Path) -> None:
    more = write_jsonl(tmp_path / "m.jsonl", ["a"], ["text"])
    with pytest.raises(InputError, match="no index at"):
        add_documents("missing", more, tmp_path, encoder=HashEncoder())
    assert not (tmp_path / "missing").exists() or not any((tmp_path / "missing").glob("v*"))
    build_fake(tmp_path / "ix", ["d0", "d1"], ["one", "two"])

    class Other(HashEncoder):
        def identity(self) -> dict[str, Any]:
            return {**ENCODER, "name": "other", "weights_sha256": "f" * 64}

    with pytest.raises(InputError, match="was built with model"):
        add_documents("ix", more, tmp_path, encoder=Other())
    assert Index.open("ix", tmp_path).manifest["version"] == 1


# ---------------------------------------------------------------- id mapping property


def apply_ops(
    tmp_path: Path, ops: list[tuple[str, list[int]]], encoder: Any, vocab: list[str]
) -> None:
    """Run add/delete ops and check after each that the index holds exactly the live docs."""
    live: dict[str, str] = {}

    def text(i: int, gen: int) -> str:
        r = np.random.default_rng(i * 7919 + gen)
        return " ".join(vocab[j] for j in r.integers(0, len(vocab), 10))

    generation: dict[int, int] = {}
    for step, (op, picks) in enumerate(ops):
        if op == "delete":
            ids = [f"d{i}" for i in picks]
            if len(Index.open("ix", tmp_path)) <= len(set(ids) & set(live)):
                continue  # would empty the index
            delete_documents("ix", ids, tmp_path)
            for i in ids:
                live.pop(i, None)
        else:  # add: new ids appended, existing ids changed (op == "change") or re-added as is
            rows = []
            for i in dict.fromkeys(picks):
                if op == "change" or f"d{i}" not in live:
                    generation[i] = generation.get(i, 0) + 1
                rows.append((f"d{i}", text(i, generation.get(i, 0))))
            corpus = write_jsonl(
                tmp_path / f"ops-{step}.jsonl", *map(list, zip(*rows, strict=True))
            )
            if step == 0:
                from searchpipe.index.bm25 import BuildBM25
                from searchpipe.pipeline import Pipeline
                from searchpipe.stages.build import BuildIndex
                from searchpipe.stages.embed import Embed
                from searchpipe.stages.ingest import Ingest

                build = BuildIndex(tmp_path / "ix", "Flat", encoder.identity(), {}, len(rows))
                build.hooks.append(BuildBM25())
                stream = Pipeline([Ingest(corpus), Embed(encoder)]).stream()
                for _ in build(stream):
                    pass
            else:
                add_documents("ix", corpus, tmp_path, encoder=encoder)
            live.update(rows)
        index = Index.open("ix", tmp_path)
        stored = dict(zip(doc_ids(index), index.docs.column(C.TEXT).to_pylist(), strict=True))
        assert stored == live, f"after step {step} ({op}) the doc store is not the live set"
        assert index.faiss_index.ntotal == len(live) == index.manifest["bm25"]["docs"]
        assert own_vector_finds_own_id(index) == 1.0


def op_sequences() -> st.SearchStrategy[list[tuple[str, list[int]]]]:
    picks = st.lists(st.integers(0, 80), min_size=1, max_size=25)
    first = st.tuples(st.just("add"), st.lists(st.integers(0, 80), min_size=5, max_size=40))
    later = st.tuples(st.sampled_from(["add", "change", "delete"]), picks)
    return st.builds(lambda a, b: [a, *b], first, st.lists(later, min_size=1, max_size=6))


FUZZ_COUNT = {"sequences": 0, "ops": 0}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=op_sequences())
def test_id_mapping_survives_random_add_delete_sequences(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, list[int]]]
) -> None:
    vocab = "red green blue cyan magenta yellow black white gray pink".split() + [
        f"w{i}" for i in range(200)
    ]
    apply_ops(tmp_path_factory.mktemp("seq"), ops, HashEncoder(), vocab)
    FUZZ_COUNT["sequences"] += 1
    FUZZ_COUNT["ops"] += len(ops)


def sample_vocab() -> list[str]:
    words = re.findall(
        r"[a-z]{4,}", (ROOT / "searchpipe/data/sample/corpus.jsonl").read_text().lower()
    )
    return sorted(set(words))


def minilm_id_mapping(
    tmp_path: Path, encoder: Any, n_docs: int, steps: int, seed: int
) -> dict[str, Any]:
    """Random add/change/delete steps on real MiniLM embeddings; then every live doc's own text,
    embedded afresh, must return its own id first."""
    rng = np.random.default_rng(seed)
    vocab = sample_vocab()
    ops: list[tuple[str, list[int]]] = [("add", list(range(n_docs)))]
    top = n_docs
    for _ in range(steps):
        op = str(rng.choice(["add", "change", "delete"]))
        size = max(1, n_docs // 20)
        if op == "add":
            ops.append(
                (op, list(range(top, top + size)) + rng.integers(0, top, size // 2).tolist())
            )
            top += size
        else:
            ops.append((op, rng.integers(0, top, size).tolist()))
    apply_ops(tmp_path, ops, encoder, vocab)
    index = Index.open("ix", tmp_path)
    texts = index.docs.column(C.TEXT).to_pylist()
    vectors = encoder.encode(texts)  # the live documents' own texts, embedded again
    _, rows = index.search(vectors, 1)
    own = rows[:, 0] == np.arange(len(index))
    return {"docs": len(index), "steps": steps, "own_id_first": float(own.mean()),
            "misses": [texts[i] for i in np.flatnonzero(~own)[:3]]}  # fmt: skip


def test_id_mapping_with_minilm(tmp_path: Path, encoder: Any) -> None:
    result = minilm_id_mapping(tmp_path, encoder, n_docs=300, steps=4, seed=0)
    print(f"\nMiniLM id mapping: {result}")
    assert result["own_id_first"] == 1.0


@pytest.mark.slow
def test_id_mapping_with_minilm_10k(tmp_path: Path, encoder: Any) -> None:
    result = minilm_id_mapping(tmp_path, encoder, n_docs=10_000, steps=12, seed=1)
    print(f"\nMiniLM id mapping, 10k: {result}")
    assert result["own_id_first"] == 1.0


# ---------------------------------------------------------------- the commands


def cli() -> Any:
    from searchpipe.cli import _Group
    from searchpipe.cli.index import COMMANDS

    return _Group(name="searchpipe", commands={c.name: c for c in COMMANDS})


def test_check_add_delete_commands(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    ids = [f"d{i}" for i in range(30)]
    texts = [words_text(rng) for _ in ids]
    build_fake(tmp_path / "ix", ids, texts)
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(cli(), [*args, "--index-dir", str(tmp_path)])

    ok = run("check", "ix", "--json")
    assert ok.exit_code == 0 and json.loads(ok.output)["docs"] == 30
    same = write_jsonl(tmp_path / "same.jsonl", ids[:5], texts[:5])
    result = run("add", "ix", str(same))  # all unchanged: no model is loaded, nothing committed
    assert result.exit_code == 0 and "5 unchanged (nothing to commit)" in result.output
    (tmp_path / "ids.txt").write_text("# to remove\nd3\n\nd4\n")
    result = run(
        "delete",
        "ix",
        "--ids",
        "d1,d2",
        "--ids",
        "zz",
        "--ids-file",
        str(tmp_path / "ids.txt"),
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "index": "ix", "deleted": 4, "not_found": 1, "version": 2, "docs": 26, "committed": True,
    }  # fmt: skip
    assert run("check", "ix").exit_code == 0
    # user mistakes exit 2, corruption exits 1, always one line naming the problem
    assert run("delete", "ix").exit_code == 2
    assert run("delete", "nope", "--ids", "x").exit_code == 2
    assert run("add", "ix", str(tmp_path / "absent.jsonl")).exit_code == 2
    assert run("check", "../etc").exit_code == 2
    docs = Index.open("ix", tmp_path).version_dir / "docs.arrow"
    docs.write_bytes(docs.read_bytes()[:-8] + b"\0" * 8)
    bad = run("check", "ix")
    assert bad.exit_code == 1 and "docs.arrow" in bad.output and "Traceback" not in bad.output


# ---------------------------------------------------------------- hostile files


def rewrite_manifest(root: Path, **changes: Any) -> None:
    """Change manifest fields and re-sign it, as an attacker who edits the file could."""
    m = json.loads((root / MANIFEST).read_text())
    m.update(changes)
    m["manifest_sha256"] = manifest_digest(m)
    (root / MANIFEST).write_bytes(manifest_bytes(m))


@pytest.mark.parametrize(
    "changes",
    [
        {"version_dir": "../../etc"},
        {"version_dir": "/tmp"},
        {"files": {"../../outside.txt": {"size": 1, "sha256": "0"}}},
        {"files": {"/etc/passwd": {"size": 1, "sha256": "0"}}},
        {"kept_versions": ["../../home"]},
        {"files": "docs.arrow"},
    ],
)
def test_manifest_paths_cannot_escape_the_index(tmp_path: Path, changes: dict[str, Any]) -> None:
    build_fake(tmp_path / "ix", ["a", "b"], ["one", "two"], bm25=False)
    rewrite_manifest(tmp_path / "ix", **changes)
    with pytest.raises(RunError, match="corrupt"):
        Index.open("ix", tmp_path)
    with pytest.raises(RunError):
        from searchpipe.index.store import check_index

        check_index("ix", tmp_path)


def test_edited_manifest_is_refused(tmp_path: Path) -> None:
    build_fake(tmp_path / "ix", ["a", "b"], ["one", "two"], bm25=False)
    path = tmp_path / "ix" / MANIFEST
    m = json.loads(path.read_text())
    m["doc_count"] = 3  # not re-signed
    path.write_text(json.dumps(m, indent=2))
    with pytest.raises(RunError, match="manifest_sha256"):
        Index.open("ix", tmp_path)


def test_no_unsafe_loaders_in_the_package() -> None:
    """Weights only through safetensors or torch.load(weights_only=True); no remote code, no
    pickle, YAML only through the safe loader."""
    problems = []
    for f in sorted((ROOT / "searchpipe").rglob("*.py")):
        src = f.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", src):
            if "weights_only=True" not in m.group(1):
                problems.append(f"{f.name}: {m.group(0)}")
        for pattern in (
            r"trust_remote_code\s*=\s*True",
            r"yaml\.(unsafe_)?load\(",
            r"\bpickle\.loads?\(",
            r"allow_pickle\s*=\s*True",
            r"\bimport dill\b",
        ):
            problems += [f"{f.name}: {m.group(0)}" for m in re.finditer(pattern, src)]
    assert problems == []


def test_an_open_index_keeps_answering_after_its_version_is_removed(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    ids = [f"d{i}" for i in range(50)]
    texts = [words_text(rng) for _ in ids]
    build_fake(tmp_path / "ix", ids, texts)
    reader = Index.open("ix", tmp_path)
    dense_before = reader.search(text_vectors(texts[:5]), 3)[1]
    lexical_before = reader.bm25.search(texts[:5], 3)[1]
    for i in range(3):  # with 2 versions kept, the reader's folder is removed
        delete_documents("ix", [ids[10 + i]], tmp_path)
    assert not reader.version_dir.exists()
    np.testing.assert_array_equal(reader.search(text_vectors(texts[:5]), 3)[1], dense_before)
    np.testing.assert_array_equal(reader.bm25.search(texts[:5], 3)[1], lexical_before)
    assert reader.docs.column(C.DOC_ID).to_pylist() == ids  # memory-mapped, still readable


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 6), min_size=1, max_size=6),
    picks=st.lists(st.integers(0, 10_000), max_size=30),
)
def test_row_taker_takes_what_arrow_takes(sizes: list[int], picks: list[int]) -> None:
    """``RowTaker`` (per-batch takes, as the doc store is read) gives ``pa.Table.take``'s rows
    in the asked order, repeats included, of every column or of the ones named."""
    from searchpipe.arrow import RowTaker

    start = np.cumsum([0, *sizes])
    schema = pa.schema([("id", pa.string()), ("n", pa.int64())])
    table = pa.Table.from_batches(
        [
            pa.record_batch([[f"d{i}" for i in range(a, b)], list(range(a, b))], schema=schema)
            for a, b in zip(start[:-1], start[1:], strict=True)
        ],
        schema,
    )
    taker = RowTaker(table)
    if table.num_rows == 0:
        assert taker.take([]).num_rows == 0
        return
    rows = [p % table.num_rows for p in picks]
    assert taker.take(rows).to_pylist() == table.take(pa.array(rows, pa.int64())).to_pylist()
    assert taker.take(np.array(rows), ("n",)).column_names == ["n"]
    with pytest.raises(IndexError, match="out of range"):
        taker.take([table.num_rows])
