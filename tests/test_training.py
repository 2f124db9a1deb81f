"""Training our own models, mining, dev split, tuning and run comparison, on a tiny BEIR folder.

The tiny dataset is 40 documents of the bundled sample corpus; its 24 queries are the first
words of a document (the document is the positive). Queries 0-19 are judged in ``train``,
20-23 in ``test``, which training must never open.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from searchpipe import columns as C
from searchpipe.errors import InputError
from searchpipe.eval.compare import compare_runs, format_comparison
from searchpipe.training.train import (
    TEACHER_SCORE,
    EmbedderTrainConfig,
    MiningConfig,
    Prepared,
    RerankerTrainConfig,
    dev_split,
    hard_negatives,
    read_split,
    set_attention_dropout,
)

SAMPLE = Path(__file__).resolve().parents[1] / "searchpipe" / "data" / "sample" / "corpus.jsonl"


def make_beir(folder: Path, n_docs: int = 40, n_train: int = 20, n_test: int = 4) -> Path:
    docs = [json.loads(line) for line in SAMPLE.read_text().splitlines()][:n_docs]
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [
        {"_id": f"q{i:02d}", "text": " ".join(d["text"].split()[:8])}
        for i, d in enumerate(docs[: n_train + n_test])
    ]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    header = "query-id\tcorpus-id\tscore\n"
    train = "".join(f"q{i:02d}\t{docs[i]['_id']}\t1\n" for i in range(n_train))
    test = "".join(f"q{i:02d}\t{docs[i]['_id']}\t1\n" for i in range(n_train, n_train + n_test))
    (folder / "qrels" / "train.tsv").write_text(header + train)
    (folder / "qrels" / "test.tsv").write_text(header + test)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """(BEIR folder, SEARCHPIPE_HOME holding its hybrid index 'tiny')."""
    from searchpipe.api import build_index

    root = tmp_path_factory.mktemp("tiny")
    data = make_beir(root / "beir")
    old = os.environ.get("SEARCHPIPE_HOME")
    os.environ["SEARCHPIPE_HOME"] = str(root)
    try:
        build_index(corpus=data, name="tiny", progress=False)
        yield data, root
    finally:
        if old is None:
            os.environ.pop("SEARCHPIPE_HOME")
        else:
            os.environ["SEARCHPIPE_HOME"] = old


@pytest.fixture
def no_test_qrels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every qrels file opened; a test asserts no test split is among them."""
    import searchpipe.eval.runs as ev

    opened: list[str] = []
    real = ev.read_qrels

    def recording(path):  # type: ignore[no-untyped-def]
        opened.append(str(path))
        return real(path)

    monkeypatch.setattr(ev, "read_qrels", recording)
    return opened


def test_dev_split_is_deterministic_disjoint_and_complete() -> None:
    ids = [f"q{i}" for i in range(100)]
    train, dev = dev_split(ids, 0.1, seed=7)
    assert (train, dev) == dev_split(list(reversed(ids)), 0.1, seed=7)
    assert len(dev) == 10 and not set(train) & set(dev)
    assert set(train) | set(dev) == set(ids)
    assert dev != dev_split(ids, 0.1, seed=8)[1]


def test_read_split_refuses_test_and_missing_splits(tiny) -> None:
    data, _ = tiny
    with pytest.raises(InputError, match="test split is refused"):
        read_split(data, "test")
    with pytest.raises(InputError, match="has qrels splits"):
        read_split(data, "dev")


def test_hard_negatives_exclude_judged_docs_and_likely_false_negatives() -> None:
    doc_ids = ["pos", "near", "judged0", "easy", "other", "pos2"]
    cands = pa.table(
        {
            C.QUERY_ID: ["q"] * 5,
            C.DOC_ROW: pa.array([1, 0, 2, 3, 4], pa.int64()),
            C.RANK: pa.array([1, 2, 3, 4, 5], pa.int32()),
            TEACHER_SCORE: pa.array([0.79, 0.80, 0.6, 0.3, 0.5], pa.float32()),
        }
    )
    qrels = {"q": {"pos": 1, "judged0": 0}}
    negs = hard_negatives(cands, qrels, doc_ids, n=5, margin=0.95, sample=False)
    # 'near' scores 0.79 >= 0.95 * 0.80: a likely false negative; judged docs never negatives
    assert [doc_ids[r] for r in negs["q"]] == ["easy", "other"]
    assert [doc_ids[r] for r in hard_negatives(cands, qrels, doc_ids, 5, 1.0, False)["q"]] == [
        "near",
        "easy",
        "other",
    ]
    assert len(hard_negatives(cands, qrels, doc_ids, 1, 0.95, sample=True, seed=0)["q"]) == 1


def test_mining_on_our_index_keeps_dev_apart_and_never_reads_test(
    tiny, tmp_path: Path, no_test_qrels: list[str]
) -> None:
    data, _ = tiny
    cfg = RerankerTrainConfig(
        data=data, output=tmp_path / "rr", index="tiny", mining=MiningConfig(depth=10, negatives=3)
    )
    prep = Prepared(cfg)
    assert not set(prep.train_ids) & set(prep.dev_ids)
    assert sorted(prep.train_ids + prep.dev_ids) == [f"q{i:02d}" for i in range(20)]
    for q, rows in prep.negatives.items():
        positives = {d for d, r in prep.qrels[q].items() if r > 0}
        assert rows and not positives & {prep.doc_ids[r] for r in rows}
    trained_on = {text for text, _, _ in prep.examples(prep.train_ids)}
    assert not trained_on & {prep.query_text[q] for q in prep.dev_ids}
    dev_qrels = (cfg.output / "train" / "dev-qrels.tsv").read_text().splitlines()[1:]
    assert {line.split("\t")[0] for line in dev_qrels} == set(prep.dev_ids)
    assert no_test_qrels and not any("test" in Path(p).name for p in no_test_qrels)


def _body_changed(trained: Path, init: Path) -> bool:
    """Whether any transformer-layer weight differs between two folders (prefixes aside)."""
    from safetensors.numpy import load_file

    def layers(folder: Path) -> dict[str, np.ndarray]:
        weights = load_file(str(folder / "model.safetensors"))
        return {
            k[k.index("encoder.layer.") :]: v for k, v in weights.items() if "encoder.layer." in k
        }

    before, after = layers(init), layers(trained)
    assert before.keys() == after.keys()
    return any(not np.array_equal(before[k], after[k]) for k in before)


def test_short_embedder_training_writes_a_folder_index_loads(tiny, tmp_path: Path) -> None:
    from searchpipe.models.biencoder import BiEncoder
    from searchpipe.training.train import train_embedder

    data, _ = tiny
    out = tmp_path / "embedder"
    summary = train_embedder(
        EmbedderTrainConfig(
            data=data, output=out, index="tiny", max_steps=2, batch_size=4, max_length=32, lr=1e-3,
            eval_queries=2, eval_depth=3, mining=MiningConfig(depth=5, negatives=1), progress=False,
        )
    )  # fmt: skip
    ours, base = BiEncoder(str(out)), BiEncoder("minilm")
    ident = ours.identity()
    assert ident["normalize"] and ident["dim"] == 384
    texts = ["honey bees dance", "planets orbit the sun"]
    v = ours.encode(texts)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-3)
    # the folder holds the trained weights, or the init's where dev ranked the init higher
    changed = bool(np.abs(v - base.encode(texts)).max() > 1e-4)
    assert changed == (summary["kept"] == "trained"), summary
    assert summary["dev_init"] is not None


def test_an_embedder_that_loses_to_its_init_on_dev_leaves_the_init_in_its_folder(
    tiny, tmp_path: Path
) -> None:
    """A learning rate far too high wrecks MiniLM in a few steps; the dev check at step 0
    saw the init do better, so the folder holds the init's weights, and the CLI says so."""
    from click.testing import CliRunner

    from searchpipe.cli import main
    from searchpipe.models.resolve import resolve_model

    data, _ = tiny
    out = tmp_path / "wrecked"
    result = CliRunner().invoke(
        main,
        [
            "train", "embedder", "--data", str(data), "--output", str(out), "--index", "tiny",
            "--max-steps", "4", "--batch-size", "4", "--max-length", "32", "--lr", "0.05",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "the embedder folder holds its init: training did not beat" in result.output
    summary = json.loads((out / "searchpipe_train.json").read_text())
    assert summary["kept"] == "init", summary
    assert summary["dev_best"] <= summary["dev_init"] + 0.002
    assert not _body_changed(out, resolve_model("minilm").path)


def test_keep_init_keeps_the_trained_embedder_only_for_a_dev_gain() -> None:
    from types import SimpleNamespace

    from searchpipe.training.train import keep_init

    def trainer(history: list[dict[str, float]]) -> SimpleNamespace:
        return SimpleNamespace(
            args=SimpleNamespace(metric_for_best_model="eval_dev_ndcg@10"),
            state=SimpleNamespace(log_history=history),
        )

    start = [{"step": 0, "eval_dev_ndcg@10": 0.70}, {"step": 5, "eval_dev_ndcg@10": 0.75}]
    assert keep_init(trainer(start), 0.75)["kept"] == "trained"
    assert keep_init(trainer(start), 0.701)["kept"] == "init"  # within MIN_GAIN: not a gain
    assert keep_init(trainer(start), 0.65)["kept"] == "init"
    assert keep_init(trainer(start[1:]), 0.75) == {
        "dev_init": None, "kept": "trained", "verdict": "no dev check of the init",
    }  # fmt: skip


def test_tune_writes_a_valid_search_config(tiny, tmp_path: Path) -> None:
    from searchpipe.config import JobConfig, SearchConfig, load_config  # noqa: F401
    from searchpipe.index.store import Index
    from searchpipe.training.sweep import format_table, sweep, write_config

    data, root = tiny
    qrels = tmp_path / "dev.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq00\td001\t1\nq01\td002\t1\n")
    result = sweep(
        Index.open("tiny", root / "indexes"), data / "queries.jsonl", qrels, k=10,
        rrf_ks=(30, 60), weights=((1.0, 1.0), (1.0, 0.5)),
    )  # fmt: skip
    kinds = {r["retriever"] for r in result["rows"]}
    assert kinds == {"dense", "bm25", "hybrid"}
    assert "ndcg@10" in format_table(result["rows"], result["best"])
    path = write_config(result["search"], tmp_path / "tuned.yaml", data / "queries.jsonl", "tiny")
    import yaml

    section = yaml.safe_load(path.read_text())["search"]
    SearchConfig.model_validate(section)
    assert section["retriever"] == result["best"]["retriever"]


def test_compare_runs_paired_test() -> None:
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(30)}
    weak = {f"q{i}": {f"x{i}": 2.0, f"d{i}": 1.0 if i % 3 else 0.5} for i in range(30)}
    strong = {f"q{i}": {f"d{i}": 2.0, f"x{i}": 1.0} for i in range(30)}
    for test in ("student", "fisher"):
        same = compare_runs({"a": weak, "b": dict(weak)}, qrels, ("ndcg@10",), stat_test=test)
        (row,) = same["comparisons"]
        assert row["p_value"] == 1.0 and not row["significant"] and row["delta"] == 0
        diff = compare_runs({"weak": weak, "strong": strong}, qrels, ("ndcg@10", "map"), test)
        assert all(c["significant"] and c["delta"] > 0 for c in diff["comparisons"])
        assert diff["comparisons"][0]["wins"] == 30
    table = format_comparison(diff)
    assert "strong" in table and "*" in table
    with pytest.raises(InputError, match="at least two runs"):
        compare_runs({"a": weak}, qrels)
    with pytest.raises(InputError, match="stat_test"):
        compare_runs({"a": weak, "b": strong}, qrels, stat_test="wilcoxon")


def test_cli_train_refuses_test_split_and_unknown_keys(tiny, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from searchpipe.cli import main

    data, _ = tiny
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "train",
            "reranker",
            "--data",
            str(data),
            "--split",
            "test",
            "--output",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "test split is refused" in result.output
    bad = tmp_path / "train.yaml"
    bad.write_text("epochs: 1\nlearning_rate: 0.1\n")
    result = runner.invoke(
        main,
        [
            "train",
            "embedder",
            "--data",
            str(data),
            "--output",
            str(tmp_path / "o"),
            "--config",
            str(bad),
        ],
    )
    assert result.exit_code == 2 and "unknown key 'learning_rate'" in result.output


def test_reranker_training_learns_and_writes_a_folder_that_records_its_length_and_usage(
    tiny, tmp_path: Path, no_test_qrels: list[str]
) -> None:
    from searchpipe.models.crossencoder import CrossEncoderScorer, rerank_usage
    from searchpipe.models.resolve import resolve_model
    from searchpipe.training.train import train_reranker

    data, _ = tiny
    out = tmp_path / "reranker"
    summary = train_reranker(
        RerankerTrainConfig(
            data=data, output=out, index="tiny", max_steps=16, batch_size=8, max_length=48,
            lr=1e-4, eval_queries=2, eval_depth=3, mining=MiningConfig(depth=5, negatives=2),
            progress=False,
        )
    )  # fmt: skip
    assert summary["steps"] == 16 and summary["train_queries"] == 18
    assert summary["loss"]["last"] < summary["loss"]["first"]
    scorer = CrossEncoderScorer(str(out))
    scores = scorer.score(["tiny query", "tiny query"], ["a document", "another one"])
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert _body_changed(out, resolve_model("minilm").path)
    assert scorer.max_length == 48  # inference uses the trained length
    assert CrossEncoderScorer(str(out), max_length=300).max_length == 300  # not capped at 48
    usage = rerank_usage(out)
    assert usage is not None and usage["max_length"] == 48
    assert isinstance(usage["rerank"], bool) and usage["depth"] in (10, 20, 50)
    assert usage["blend"] >= 0 and "first_stage" in usage and usage["table"]
    assert summary["usage"]["rerank"] == usage["rerank"]
    assert not any("test" in Path(p).name for p in no_test_qrels)


def test_a_reranker_that_loses_on_dev_is_saved_as_do_not_rerank(
    tiny, tmp_path: Path, cross_encoder_dir: Path
) -> None:
    """An untrained head against a first stage that already finds every dev positive."""
    import shutil

    from searchpipe.index.store import Index
    from searchpipe.models.crossencoder import rerank_usage
    from searchpipe.training.usage import choose_usage

    data, root = tiny
    folder = tmp_path / "untrained"
    shutil.copytree(cross_encoder_dir, folder)
    qrels = tmp_path / "dev-qrels.tsv"
    qrels.write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i:02d}\td{i + 1:03d}\t1\n" for i in range(8))
    )
    index = Index.open("tiny", root / "indexes")
    usage = choose_usage(folder, index, data / "queries.jsonl", qrels, max_length=64)
    assert usage["first_stage"]["ndcg@10"] > 0.9
    assert usage["rerank"] is False and "no reranked order beat" in usage["reason"]
    assert rerank_usage(folder)["rerank"] is False


def test_a_rerun_with_other_settings_exits_2_and_names_them(tiny, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from searchpipe.cli import main

    data, _ = tiny
    runner = CliRunner()
    base = [
        "train", "embedder", "--data", str(data), "--output", str(tmp_path / "o"),
        "--max-steps", "1", "--batch-size", "4", "--max-length", "32", "--negatives", "1",
        "--depth", "5",
    ]  # fmt: skip
    assert runner.invoke(main, base).exit_code == 0
    changed = runner.invoke(main, [*base, "--lr", "1e-4"])
    assert changed.exit_code == 2 and "lr: 2e-05 -> 0.0001" in changed.output
    again = runner.invoke(main, base)
    assert again.exit_code == 2 and "--resume" in again.output
    assert runner.invoke(main, [*base, "--resume"]).exit_code == 0
    assert runner.invoke(main, [*base, "--lr", "1e-4", "--overwrite"]).exit_code == 0


def test_no_labels_trains_on_pseudo_queries_and_reads_no_qrels(
    tmp_path: Path, no_test_qrels: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from searchpipe.training.pseudo import pseudo_split
    from searchpipe.training.train import train_embedder

    corpus = tmp_path / "docs" / "corpus.jsonl"  # a bare corpus: no queries, no qrels
    corpus.parent.mkdir()
    corpus.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:40]))
    monkeypatch.setenv("SEARCHPIPE_HOME", str(tmp_path))
    queries, qrels, shown = pseudo_split(corpus, 100, seed=0)
    assert queries.num_rows == len(qrels) >= 30
    docs = {json.loads(line)["_id"]: json.loads(line) for line in corpus.read_text().splitlines()}
    for qid, text in zip(
        queries.column("query_id").to_pylist(), queries.column("text").to_pylist(), strict=True
    ):
        doc = docs[qid.removeprefix("pseudo-")]
        if text == doc["title"]:  # asked by its title: shown without it
            assert shown[qid] == doc["text"]
        else:  # Inverse Cloze Task: the sentence is cut out of the positive
            assert text in doc["text"] and text not in shown[qid]
    summary = train_embedder(
        EmbedderTrainConfig(
            data=corpus.parent, output=tmp_path / "emb", no_labels=True, max_steps=2,
            batch_size=4, max_length=32, eval_queries=2, eval_depth=3,
            mining=MiningConfig(depth=5, negatives=1), progress=False,
        )
    )  # fmt: skip
    assert summary["steps"] == 2 and summary["train_queries"] + summary["dev_queries"] >= 30
    assert no_test_qrels == []
    split = json.loads((tmp_path / "emb" / "train" / "split.json").read_text())
    assert split["split"] == "no-labels"


def test_the_shipped_train_configs_are_the_default_recipes() -> None:
    from searchpipe.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    paths = {"data": "d", "output": "o"}
    assert load_config(root / "train-reranker.yaml", RerankerTrainConfig, overrides=paths) == (
        RerankerTrainConfig(**paths)
    )
    assert load_config(root / "train-embedder.yaml", EmbedderTrainConfig, overrides=paths) == (
        EmbedderTrainConfig(**paths)
    )


def test_the_time_budget_counts_the_dev_checks_a_cut_run_makes() -> None:
    """A large dev slice must not eat the whole budget: a run cut short makes evals_per_epoch
    dev checks, not the whole plan's (a 518-query slice once left 1 step of 3498); each is
    costed at the measured forward rate."""
    from searchpipe.training.train import Rates, budget_steps

    cfg = RerankerTrainConfig(data="d", output="o")  # 30 minutes, 3 checks per epoch
    rates = Rates(train=7.8, forward=120.0)
    steps, info = budget_steps(cfg, planned=3498, rates=rates, dev_units=518 * 20, step_units=36)
    rate, one_eval = 0.85 * 7.8, 518 * 20 / 120.0
    assert steps == int((1800 - 3 * one_eval) * rate / 36) and 100 < steps < 3498
    assert info["dev_check_seconds"] == round(one_eval, 1)
    small, _ = budget_steps(cfg, planned=100, rates=rates, dev_units=81 * 20, step_units=36)
    assert small == 100  # the whole plan fits
    assert info["per_step"] == 36


@pytest.mark.parametrize("kind", ["embedder", "reranker"])
def test_throughput_is_measured_with_the_trainers_passes(
    kind: str, cross_encoder_dir: Path
) -> None:
    """The time budget rests on these measurements: forward and backward passes (no weight
    change, no gradient left behind), and forward-only passes, which must be faster."""
    import torch

    from searchpipe.models.resolve import resolve_model
    from searchpipe.training.train import pairs_per_second, texts_per_second

    texts = ["a short text", "another one", "and a third"]
    if kind == "embedder":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(resolve_model("minilm").path), device="cpu")
        params = list(model.parameters())
        before = [p.detach().clone() for p in params[:3]]
        rates = texts_per_second(model, texts, bf16=False)
    else:
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(str(cross_encoder_dir), device="cpu")
        params = list(model.model.parameters())
        before = [p.detach().clone() for p in params[:3]]
        rates = pairs_per_second(model, texts, texts[::-1], bf16=False)
    assert 0 < rates.train < rates.forward
    assert all(p.grad is None for p in params)
    assert all(torch.equal(a, b) for a, b in zip(before, params[:3], strict=True))


def test_dev_checks_are_cut_to_a_share_of_the_time_budget() -> None:
    from searchpipe.training.train import EVAL_SHARE, MIN_DEV, Rates, affordable_dev

    cfg = EmbedderTrainConfig(data="d", output="o", epochs=2.0)  # 30 minutes, 2 checks each
    dev = [{"n": 22}] * 518
    kept = affordable_dev(dev, lambda s: s["n"], Rates(2.7, 14.0), cfg)
    allowed = EVAL_SHARE * 1800 * 14.0 / 4  # texts the 4 checks may encode
    assert len(kept) == int(allowed // 22) and MIN_DEV <= len(kept) < 518
    assert len(affordable_dev(dev, lambda s: s["n"], Rates(900.0, 1000.0), cfg)) == 518
    assert len(affordable_dev(dev, lambda s: s["n"], Rates(0.001, 0.01), cfg)) == MIN_DEV


def test_pseudo_query_dev_scores_documents_with_the_query_cut_out(
    sample_index, cross_encoder_dir: Path
) -> None:
    """Label-free dev checks read each candidate without the pseudo-query's text, as training
    showed the positive; a reranker scored on the intact text finds its query by string match
    (0.99 dev nDCG@10 against 0.67 on SciFact's real test queries)."""
    from searchpipe.models.crossencoder import CrossEncoderScorer
    from searchpipe.training.sweep import PairCache

    scorer = CrossEncoderScorer(str(cross_encoder_dir), precision="fp32")
    rows = [0, 1, 2]
    texts = sample_index.texts(rows)
    title = sample_index.docs.column("title").to_pylist()[0]
    assert title and title in texts[0]
    cut = PairCache(scorer, sample_index, {"q": title}, cut_queries=True)
    intact = PairCache(scorer, sample_index, {"q": title})
    for cache in (cut, intact):
        cache.score({"q": rows})
    expected = scorer.score([title] * 3, [texts[r].replace(title, " ") for r in rows])
    assert [cut.scores[("q", r)] for r in rows] == pytest.approx(expected.tolist(), abs=1e-6)
    assert cut.scores[("q", 0)] != pytest.approx(intact.scores[("q", 0)], abs=1e-6)


def test_a_dev_gain_must_hold_in_a_paired_test_of_the_best_of_the_grid() -> None:
    import numpy as np

    from searchpipe.eval.compare import selection_p

    base = {f"q{i}": 0.5 for i in range(20)}
    everywhere = {q: 0.6 for q in base}  # better on every query: p = 2**-20 exactly
    assert selection_p([everywhere], base, 0) <= 1 / 10_000 + 1e-9
    # one query better by 0.05 (mean gain 0.0025 on 20, above MIN_GAIN): 1 of 2 sign flips
    # keeps it, so p is about a half
    one = {**base, "q0": 0.55}
    assert 0.45 < selection_p([one], base, 0) < 0.55
    assert selection_p([base], base, 0) == 1.0
    # the best of 30 settings that are noise around the base: its plain paired p is small,
    # but the chance that the best of 30 noises gains that much is not
    rng = np.random.default_rng(1)
    noise = [{q: 0.5 + rng.normal(0, 0.1) for q in base} for _ in range(30)]
    d = np.asarray([[c[q] - base[q] for q in sorted(base)] for c in noise])
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(20))
    best = int(np.argmax(t))
    plain, chosen = selection_p([noise[best]], base, 0), selection_p(noise, base, best)
    assert plain < 0.05 < chosen
    # exactly: the share of sign flips whose largest paired t reaches the chosen one's
    signs = np.random.default_rng(0).choice((-1.0, 1.0), size=(10_000, 20))
    flipped = signs[:, None, :] * d[None, :, :]
    null = (flipped.mean(axis=2) / (flipped.std(axis=2, ddof=1) / np.sqrt(20))).max(axis=1)
    assert chosen == pytest.approx(float((null >= t[best] - 1e-9 * abs(t[best])).mean()))


def test_the_best_of_a_grid_is_judged_by_its_t_not_its_mean_gain() -> None:
    """A steady win (+0.03 on every query, a little spread) among settings of wide noise
    (standard deviation 0.3, as a reranker alone at depth 50 can be): the largest mean gain
    under the null comes from the wide ones and would bury the steady win; their t does not."""
    import numpy as np

    from searchpipe.eval.compare import selection_p

    rng = np.random.default_rng(7)
    queries = [f"q{i}" for i in range(80)]
    base = {q: 0.5 for q in queries}
    steady = {q: 0.53 + rng.normal(0, 0.05) for q in queries}
    wide = [{q: 0.5 + rng.normal(0, 0.3) for q in queries} for _ in range(10)]
    p = selection_p([steady, *wide], base, 0)
    assert p < 0.01
    # by raw mean gains, the share of sign flips whose best mean reaches the steady gain
    d = np.asarray([[c[q] - 0.5 for q in queries] for c in (steady, *wide)])
    signs = np.random.default_rng(0).choice((-1.0, 1.0), size=(10_000, 80))
    by_mean = float(((signs @ d.T / 80).max(axis=1) >= d[0].mean()).mean())
    assert by_mean > 0.1


def test_sweep_picks_a_reranker_only_for_a_clear_win_over_the_first_stage() -> None:
    """The sweep's choice of a reranked setting over the first stage: a win on every query
    is kept; the best of 20 noise settings, which edges the first stage out on 12 queries,
    is refused, with the p-value computed here by hand from the per-query scores."""
    import numpy as np

    from searchpipe.eval.compare import selection_p
    from searchpipe.training.sweep import MAX_P, guard_rerank

    queries = [f"q{i}" for i in range(12)]
    base = {q: 0.5 for q in queries}
    rng = np.random.default_rng(3)
    noise = [{q: 0.5 + rng.normal(0, 0.15) for q in queries} for _ in range(20)]
    per_query = [base, *noise]
    rows = [{"rerank_depth": 0, "ndcg@10": 0.5, "ms": 1.0}] + [
        {"rerank_depth": 10, "ndcg@10": float(np.mean(list(n.values()))), "ms": 5.0} for n in noise
    ]
    best = int(np.argmax([r["ndcg@10"] for r in rows]))
    assert best > 0 and rows[best]["ndcg@10"] > 0.52  # the noise wins on these queries
    chosen, check = guard_rerank(rows, per_query, list(range(len(rows))), best)
    p = selection_p(noise, base, best - 1)
    assert check is not None and check["p_value"] == round(p, 4) and p >= MAX_P
    assert chosen == 0 and check["rerank"] is False and "not a clear win" in check["reason"]
    clear = [base, {q: 0.7 for q in queries}]
    rows2 = [rows[0], {"rerank_depth": 10, "ndcg@10": 0.7, "ms": 5.0}]
    chosen, check = guard_rerank(rows2, clear, [0, 1], 1)
    assert chosen == 1 and check is not None and check["rerank"] and check["p_value"] < 0.001
    assert guard_rerank(rows2, clear, [0, 1], 0) == (0, None)  # a first stage: nothing to check


def test_training_stops_at_its_time_budget_with_a_last_dev_check() -> None:
    """The deadline callback, on the trainer's own control object: nothing before the
    deadline; past it, stop, with a dev check and a checkpoint at that step, once."""
    import time

    from transformers import TrainerControl, TrainerState

    from searchpipe.training.train import deadline_callback

    state, control = TrainerState(global_step=7, max_steps=100), TrainerControl()
    patient = deadline_callback(3600.0)
    patient.on_train_begin(None, state, control)
    patient.on_step_end(None, state, control)
    assert not (control.should_training_stop or control.should_evaluate or control.should_save)
    assert patient.stopped_at is None
    hasty = deadline_callback(0.01)
    hasty.on_train_begin(None, state, control)
    time.sleep(0.02)
    hasty.on_step_end(None, state, control)
    assert control.should_training_stop and control.should_evaluate and control.should_save
    assert hasty.stopped_at == 7
    state.global_step = 8
    hasty.on_step_end(None, state, TrainerControl())
    assert hasty.stopped_at == 7


def test_a_budgeted_run_past_its_deadline_ends_with_a_dev_check(tiny, tmp_path: Path) -> None:
    """A real trainer with a budget of a fraction of a second: the step count fitted to it is
    one step, the deadline stops the run there with a dev check and a checkpoint, and the
    model is saved and summarised."""
    import json

    from searchpipe.training.train import train_embedder

    data, _ = tiny
    out = tmp_path / "embedder"
    summary = train_embedder(
        EmbedderTrainConfig(
            data=data, output=out, index="tiny", time_budget=0.001, batch_size=4, max_length=32,
            eval_queries=2, eval_depth=3, mining=MiningConfig(depth=5, negatives=1), progress=False,
        )
    )  # fmt: skip
    assert summary["stopped_on_time_at"] == summary["steps"] >= 1
    assert summary["dev_best"] is not None  # the forced dev check ran
    assert json.loads((out / "searchpipe_train.json").read_text())["steps"] == summary["steps"]


def test_attention_dropout_is_off_in_training_and_hidden_dropout_stays() -> None:
    """With attention dropout 0 a BERT self-attention gives in training mode exactly what it
    gives in eval mode (PyTorch's flash path, no mask drawn); the model's hidden-state dropout
    is untouched; 0.1 (BERT's own) draws a mask again."""
    import torch
    from sentence_transformers import SentenceTransformer

    from searchpipe.models.resolve import resolve_model

    model = SentenceTransformer(str(resolve_model("minilm").path), device="cpu")
    bert = model[0].auto_model
    assert set_attention_dropout(model, 0.0) == bert.config.num_hidden_layers
    attention = bert.encoder.layer[0].attention.self
    x = torch.randn(2, 9, bert.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        attention.eval()
        expected = attention(x)[0]
        attention.train()
        assert torch.equal(attention(x)[0], expected)
        assert torch.equal(attention(x)[0], expected)
        set_attention_dropout(model, 0.1)
        assert not torch.equal(attention(x)[0], expected)
    assert bert.encoder.layer[0].output.dropout.p == bert.config.hidden_dropout_prob > 0
