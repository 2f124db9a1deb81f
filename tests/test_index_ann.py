"""Index folder: FAISS against exact search, factory strings, manifest checks, atomic commits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from searchpipe import columns as C
from searchpipe.arrow import vectors_to_arrow
from searchpipe.errors import InputError
from searchpipe.index.ann import exact_topk, recall_at_k, sample_queries
from searchpipe.index.ann import tune_search_params as tune
from searchpipe.index.faiss import choose_factory, make_faiss_index
from searchpipe.index.store import Index, IndexWriter, verify
from searchpipe.stages.build import BuildIndex

DIM = 32


def random_docs(n: int, seed: int = 0) -> tuple[np.ndarray, list[pa.RecordBatch]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    batches = []
    for start in range(0, n, 1000):
        v = vectors[start : start + 1000]
        ids = [f"d{i}" for i in range(start, start + len(v))]
        batches.append(
            pa.record_batch(
                {
                    C.DOC_ID: ids,
                    C.TITLE: [""] * len(v),
                    C.TEXT: [f"text {i}" for i in ids],
                    C.METADATA: pa.nulls(len(v), pa.string()),
                    C.EMBEDDING: vectors_to_arrow(v),
                }
            )
        )
    return vectors, batches


ENCODER = {
    "name": "test",
    "weights_sha256": "0" * 64,
    "pooling": "mean",
    "normalize": True,
    "dim": DIM,
    "max_length": 16,
}


def build(
    root: Path,
    factory: str,
    batches: list[pa.RecordBatch],
    hooks: list | None = None,
    on_disk: bool = False,
) -> Index:
    stage = BuildIndex(
        root,
        factory,
        ENCODER,
        {"corpus": {"path": "x", "sha256": "y"}},
        n_rows=sum(b.num_rows for b in batches),
        on_disk=on_disk,
    )
    stage.hooks = hooks or []
    for _ in stage(iter(batches)):
        pass
    return Index.open(root)


def test_flat_index_equals_exact_search(tmp_path: Path) -> None:
    vectors, batches = random_docs(3000)
    index = build(tmp_path / "flat", "Flat", batches)
    queries = sample_queries(vectors, 50, seed=1)
    scores, rows = index.search(queries, 10)
    sims = queries @ vectors.T
    exact = np.argsort(-sims, axis=1)[:, :10]
    # same scores as brute force, and each returned row really has its returned score
    np.testing.assert_allclose(scores, np.take_along_axis(sims, exact, axis=1), atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(sims, rows, axis=1), scores, atol=1e-5)
    # midpoint queries tie their two source docs exactly, so compare sets, not order
    assert all(set(r) == set(e) for r, e in zip(rows.tolist(), exact.tolist(), strict=True))
    assert index.docs.column(C.DOC_ID)[int(rows[0, 0])].as_py() == f"d{rows[0, 0]}"


@pytest.mark.parametrize("factory", ["HNSW16", "IVF32,Flat", "IVF32,SQ8"])
def test_approximate_indexes_are_tuned_to_target_recall(tmp_path: Path, factory: str) -> None:
    from searchpipe.index.ann import TuneSearchParams

    vectors, batches = random_docs(4000)
    # the hook reads the staged version's own vectors.arrow and doc store
    index = build(tmp_path / factory.replace(",", "_"), factory, batches, [TuneSearchParams(0.9)])
    ann = index.manifest["ann"]
    assert ann["recall@10"] >= 0.9 and ann["params"]
    queries = sample_queries(vectors, 200, seed=7)  # fresh queries: the setting generalises
    _, rows = index.search(queries, 10)
    truth = exact_topk(queries, iter([vectors]))
    assert recall_at_k(rows, truth) >= 0.85


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF16,PQ8"])
def test_on_disk_ivf_equals_the_in_memory_index(
    tmp_path: Path, factory: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """--on-disk: the blocks merged by faiss.contrib.ondisk answer exactly as the same index
    built in memory, from a folder moved after the build; the blocks are gone, nothing is
    printed on stdout, ``check`` covers the inverted-list file and finds a flipped byte."""
    import shutil

    import faiss

    from searchpipe.index.layout import FAISS_FILE, IVFDATA_FILE
    from searchpipe.stages import build as build_module

    entry = faiss.extract_index_ivf(make_faiss_index(factory, DIM)).code_size + 8
    monkeypatch.setattr(build_module, "ON_DISK_BLOCK", 1500 * entry)  # 4 batches of 1,000: 2 blocks
    merged: list[int] = []
    merge = build_module.OnDiskIVF.merge

    def counted(self: Any, ivfdata: Path) -> Any:
        index = merge(self, ivfdata)
        merged.append(len(self.blocks))
        return index

    monkeypatch.setattr(build_module.OnDiskIVF, "merge", counted)
    vectors, batches = random_docs(4000)
    memory = build(tmp_path / "memory", factory, batches)
    capfd.readouterr()
    build(tmp_path / "disk", factory, batches, on_disk=True)
    assert "resizing" not in capfd.readouterr().out and merged == [2]
    shutil.move(tmp_path / "disk", tmp_path / "moved")
    disk = Index.open(tmp_path / "moved")
    assert disk.manifest["on_disk"] and verify(tmp_path / "moved") == []
    vdir = disk.version_dir
    assert sorted(p.name for p in vdir.iterdir() if p.is_dir()) == []  # no block folder left
    assert IVFDATA_FILE in disk.manifest["files"]
    ivf = faiss.extract_index_ivf(disk.faiss_index)
    in_memory = (memory.version_dir / FAISS_FILE).stat().st_size
    codes = len(vectors) * (ivf.code_size + 8)  # each vector's code and id
    assert (vdir / IVFDATA_FILE).stat().st_size >= codes  # the lists are in their own file
    assert (vdir / FAISS_FILE).stat().st_size < in_memory - codes / 2  # and not in this one
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.filename == str(
        vdir / IVFDATA_FILE
    )
    queries = sample_queries(vectors, 100, seed=3)
    for nprobe in (1, 8, 32):
        for index in (memory, disk):
            faiss.extract_index_ivf(index.faiss_index).nprobe = nprobe
        m_scores, m_rows = memory.search(queries, 10)
        d_scores, d_rows = disk.search(queries, 10)
        np.testing.assert_array_equal(d_rows, m_rows)
        np.testing.assert_allclose(d_scores, m_scores, atol=1e-6)
    with open(vdir / IVFDATA_FILE, "r+b") as f:  # in place: the file is mapped by `disk`
        f.seek(f.seek(0, 2) // 2)
        byte = f.read(1)[0]
        f.seek(-1, 1)
        f.write(bytes([byte ^ 0x01]))
    assert any(IVFDATA_FILE in p and "sha256" in p for p in verify(tmp_path / "moved"))


def test_ivf_trains_on_a_sample_of_the_whole_corpus(tmp_path: Path) -> None:
    """A corpus sorted by topic: two far-apart clusters, the first larger than the training
    sample. Trained on its first rows, every IVF centroid would sit in the first cluster and
    the second would crowd one list; trained on the seeded sample of all rows, the lists
    split between both."""
    import faiss

    rng = np.random.default_rng(0)
    half = 12_000  # > train_size("IVF8,Flat", 24_000) == 10_000
    centers = np.eye(DIM, dtype=np.float32)[:2]
    vectors = np.concatenate([c + 0.05 * rng.standard_normal((half, DIM)) for c in centers])
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    batches = [
        pa.record_batch({
            C.DOC_ID: [f"d{i}" for i in range(s, s + 1000)], C.TITLE: [""] * 1000,
            C.TEXT: ["t"] * 1000, C.METADATA: pa.nulls(1000, pa.string()),
            C.EMBEDDING: vectors_to_arrow(vectors[s : s + 1000]),
        })
        for s in range(0, 2 * half, 1000)
    ]  # fmt: skip
    index = build(tmp_path / "sorted", "IVF8,Flat", batches)
    ivf = faiss.extract_index_ivf(index.faiss_index)
    sizes = [ivf.invlists.list_size(i) for i in range(ivf.nlist)]
    nearest = ivf.quantizer.search(centers, 1)[1][:, 0]
    second = ivf.quantizer.search(vectors[half:], 1)[1][:, 0]
    assert len(set(second.tolist())) >= 2 and max(sizes) < half  # both clusters have lists
    assert nearest[0] != nearest[1] and sum(sizes) == 2 * half


def test_on_disk_needs_an_ivf_factory(tmp_path: Path) -> None:
    from searchpipe.index.faiss import check_on_disk

    for factory in ("Flat", "HNSW16", "PQ8"):
        with pytest.raises(InputError, match=f"'{factory}' has none; pass an IVF factory"):
            check_on_disk(factory, DIM)
    check_on_disk("OPQ8,IVF16,PQ8", DIM)  # an IVF index behind a transform is fine


def test_recall_measurement_is_exact() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[1, 2, 9, 9], [8, 7, 6, 5]])
    assert recall_at_k(found, truth) == pytest.approx(6 / 8)
    vectors, _ = random_docs(500)
    q = sample_queries(vectors, 20)
    chunks = iter([vectors[:123], vectors[123:400], vectors[400:]])
    assert (
        np.sort(exact_topk(q, chunks), 1) == np.sort(np.argsort(-(q @ vectors.T), 1)[:, :10], 1)
    ).all()


def test_tune_stops_at_smallest_setting_reaching_target() -> None:
    vectors, _ = random_docs(3000)
    index = make_faiss_index("HNSW8", DIM)
    index.add(vectors)
    q = sample_queries(vectors, 100)
    truth = exact_topk(q, iter([vectors]))
    result = tune(index, q, truth, target=0.99)
    assert result["recall@10"] >= 0.99
    low = tune(index, q, truth, target=0.01)
    assert (
        low["params"]["efSearch"] == 16 and low["params"]["efSearch"] < result["params"]["efSearch"]
    )


def test_choose_factory_by_size() -> None:
    assert choose_factory(1000) == "Flat"
    assert choose_factory(100_000).startswith("HNSW")
    assert choose_factory(10_000_000).startswith("IVF")


def test_bad_factory_string_and_untrainable_ivf(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a FAISS factory string"):
        make_faiss_index("Flatt", DIM)
    _, batches = random_docs(50)
    with pytest.raises(InputError, match="could not be trained"):
        build(tmp_path / "ivf", "IVF1024,Flat", batches)
    assert not any((tmp_path / "ivf").glob("v*")), "a failed build leaves no version behind"


def test_dimension_and_encoder_mismatch_are_refused(tmp_path: Path) -> None:
    _, batches = random_docs(100)
    index = build(tmp_path / "x", "Flat", batches)
    with pytest.raises(InputError, match="dimensional"):
        index.search(np.zeros((1, DIM + 1), np.float32), 5)
    with pytest.raises(InputError, match="was built with model 'test'"):
        index.check_encoder({**ENCODER, "name": "other", "weights_sha256": "1" * 64})
    index.check_encoder(dict(ENCODER))


def test_missing_index_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no index at"):
        Index.open("nothing", tmp_path)
    with pytest.raises(InputError, match="not allowed"):
        Index.open("../escape", tmp_path)


def test_rebuild_commits_new_version_and_failed_build_keeps_old(tmp_path: Path) -> None:
    root = tmp_path / "idx"
    _, batches = random_docs(200)
    first = build(root, "Flat", batches)
    assert first.manifest["version"] == 1 and verify(root.name, tmp_path) == []

    def failing():
        yield batches[0]
        raise RuntimeError("disk full")

    stage = BuildIndex(root, "Flat", ENCODER, {"corpus": {}}, n_rows=200)
    with pytest.raises(RuntimeError):
        for _ in stage(failing()):
            pass
    again = Index.open(root)
    assert again.manifest["version"] == 1 and len(again) == 200
    assert not list(root.glob(".staging-*")), "no staging folder is left behind"
    second = build(root, "Flat", batches[:1] if len(batches) > 1 else batches)
    assert second.manifest["version"] == 2


def test_checksums_catch_a_flipped_byte(tmp_path: Path) -> None:
    _, batches = random_docs(100)
    index = build(tmp_path / "c", "Flat", batches)
    target = index.version_dir / "index.faiss"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    problems = verify("c", tmp_path)
    assert len(problems) == 1 and "index.faiss" in problems[0]


def test_second_writer_fails_fast(tmp_path: Path) -> None:
    root = tmp_path / "locked"
    with IndexWriter(root):
        with pytest.raises(InputError, match="being written by another process"):
            with IndexWriter(root):
                pass


def test_manifest_describes_the_index(tmp_path: Path) -> None:
    _, batches = random_docs(100)
    build(tmp_path / "m", "Flat", batches)
    m = json.loads((tmp_path / "m" / "manifest.json").read_text())
    for key in (
        "format_version",
        "encoder",
        "metric",
        "factory",
        "doc_count",
        "corpus",
        "files",
        "version",
    ):
        assert key in m
    assert m["encoder"]["dim"] == DIM and m["doc_count"] == 100 and m["metric"] == "inner_product"
